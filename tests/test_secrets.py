"""Security by default: a canary API key and token appear nowhere a person or a pipeline reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from cosyvoice.sidecar.v1 import status_pb2, status_pb2_grpc
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.cli import _secrets
from sidecar.config import Config, Secret
from sidecar.credentials import ApiKeySource
from sidecar.emulator import Emulator
from sidecar.fleet import FleetSettings
from sidecar.telemetry import redact
from tests.processes import Process

CANARY_KEY = "sk-canary-4f9d2b7e61a0"
CANARY_TOKEN = "tok-canary-93be01c5d7"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_the_key_and_token_never_reach_logs_spans_errors_status_or_cmdline(
    emulator: Emulator, tmp_path: Path, log_format: str
) -> None:
    """At debug, with spans on the console: the canaries are nowhere, refused or not."""
    emulator.update_knobs(api_keys=frozenset({CANARY_KEY}))
    key_file = tmp_path / "key"
    key_file.write_text(CANARY_KEY)
    async with Process(
        "serve",
        "--listen=127.0.0.1:0",
        f"--upstream-url={emulator.url}",
        "--log-level=debug",
        f"--log-format={log_format}",
        env={
            "DASHSCOPE_API_KEY_FILE": str(key_file),
            "COSYVOICE_SIDECAR_AUTH_TOKEN": CANARY_TOKEN,
            "OTEL_TRACES_EXPORTER": "console",
        },
    ) as server:
        address = (await server.expect(r"serving on (\S+)")).group(1)
        assert server.proc is not None
        cmdline = await asyncio.to_thread(_cmdline, server.proc.pid)
        async with AsyncSynthesizerClient(address) as client:
            auth = (("authorization", f"Bearer {CANARY_TOKEN}"),)
            result = await client.synthesize("A call with the key.", metadata=auth)
            assert result.completed.audio_bytes > 0
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.synthesize("Without the token.")
            # A key refused by the upstream after a rotation: handshakes fail, logged.
            emulator.update_knobs(api_keys=frozenset({"sk-another-key"}))
            key_file.write_text(CANARY_KEY + "-rotated")
            await asyncio.sleep(1.5)  # the key file is checked every second
            async with grpc.aio.insecure_channel(address) as channel:
                stub = status_pb2_grpc.SidecarStatusStub(channel)
                status = await stub.GetStatus(status_pb2.GetStatusRequest(), metadata=auth)
        assert await server.stop() == 0
        _, out, log = await server.finish()
    seen = "\n".join([log, out, cmdline, str(status), refused.value.details() or ""])
    assert "Authorization" in log or "authorization" in log  # the handshake was logged, masked
    for canary in (CANARY_KEY, CANARY_TOKEN):
        assert canary not in seen


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode()


def test_redaction_masks_bearer_credentials_and_named_secrets() -> None:
    line = "> Authorization: Bearer sk-abc123 and api_key=sk-zzz, token xyz-secret-1"
    masked = redact(line, ["xyz-secret-1"])
    assert "sk-abc123" not in masked
    assert "sk-zzz" not in masked
    assert "xyz-secret-1" not in masked
    assert "Authorization: Bearer ***" in masked


def test_keys_compare_whatever_their_characters() -> None:
    """A key file saved with a byte-order mark (or any non-ASCII character) compares as
    unequal to the old key, instead of raising in the middle of a rotation."""
    assert Secret("\ufeffsk-new") != Secret("sk-old")
    assert Secret("sk-é") == Secret("sk-é")


def test_logs_mask_the_key_as_rotated_and_the_fleets_redis_password(tmp_path: Path) -> None:
    """What the log formatter masks follows the key file after a rotation, and covers the
    Redis URL's password when the fleet quota is on."""
    key_file = tmp_path / "key"
    key_file.write_text("sk-first-key-0001")
    config = Config(
        api_key=Secret("sk-first-key-0001"),
        api_key_file=str(key_file),
        fleet=FleetSettings(redis_url="redis://:redis-pass-42@127.0.0.1:6379/0", quota=2),
    )
    keys = ApiKeySource(config.api_key, config.api_key_file, check_interval=0.0)
    key_file.write_text("sk-second-key-000002")
    assert keys.refresh()
    masked = _secrets(config, [keys])
    assert {"sk-first-key-0001", "sk-second-key-000002", "redis-pass-42"} <= set(masked)
    line = redact("rotated to sk-second-key-000002 via redis-pass-42", masked)
    assert "sk-second" not in line
    assert "redis-pass" not in line

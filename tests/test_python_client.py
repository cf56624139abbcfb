"""The Python client: on its own, gapless, retrying only before audio, refusing misuse locally."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc
from cosyvoice_sidecar_client import (
    SERVICE_CONFIG,
    AsyncSynthesizerClient,
    StreamingCall,
    StreamStateError,
    SynthesisResult,
    channel_options,
)

from sidecar.emulator import Emulator
from sidecar.rpc._ending import PUSHBACK_KEY
from sidecar.server import SidecarServer
from tests.conftest import StartSidecar
from tests.helpers import eventually, sha256, task_record
from tests.timing import scaled

CLIENTS = Path(__file__).resolve().parent.parent / "clients" / "python"


def test_client_imports_without_the_sidecar() -> None:
    """Importing the client pulls in neither the sidecar package nor websockets."""
    probe = (
        "import sys, cosyvoice_sidecar_client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sidecar', 'websockets')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(CLIENTS)!r}); {probe}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


_SYNC_CALL = """
import hashlib, sys
from cosyvoice_sidecar_client import SynthesisResult, SynthesizerClient
with SynthesizerClient(sys.argv[1]) as client:
    result = SynthesisResult()
    for response in client.stream(["Blocking ", "client, ", "three fragments."], timeout=30):
        result.add(response)
print(result.started.task_id, hashlib.sha256(result.audio).hexdigest(), result.chunks,
      result.completed.audio_chunks)
"""


async def test_sync_client_streams_fragments(sidecar: SidecarServer, emulator: Emulator) -> None:
    """The blocking client's stream() sends fragments and yields every response in order.

    It runs in its own process, as blocking callers do: grpc's sync and asyncio
    stacks in one process can starve each other.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SYNC_CALL,
        sidecar.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    task_id, digest, chunks, completed_chunks = out.decode().split()
    assert digest == task_record(emulator, task_id).audio_sha256
    assert chunks == completed_chunks


def test_result_refuses_a_sequence_gap() -> None:
    """A missing chunk is an error, never silently glued audio."""
    result = SynthesisResult()
    result.add(pb.SynthesizeResponse(audio=pb.AudioChunk(data=b"a", sequence=0)))
    with pytest.raises(ValueError, match="expected 1"):
        result.add(pb.SynthesizeResponse(audio=pb.AudioChunk(data=b"c", sequence=2)))


# ------------------------------------------------------------------ streaming sends


async def test_send_after_finish_fails_locally_and_the_call_completes(
    client: AsyncSynthesizerClient, emulator: Emulator
) -> None:
    """send_text/flush/finish after finish() raise StreamStateError; audio and completed follow."""
    stream = await client.open_stream(timeout=scaled(20))
    await stream.send_text("Everything there is to say.")
    await stream.finish()
    with pytest.raises(StreamStateError, match=r"send_text\(\) after finish\(\)"):
        await stream.send_text("One more thing.")
    with pytest.raises(StreamStateError, match=r"flush\(\) after finish\(\)"):
        await stream.flush()
    with pytest.raises(StreamStateError, match=r"finish\(\) after finish\(\)"):
        await stream.finish()
    result = await stream.collect()
    record = task_record(emulator, result.started.task_id)
    assert record.outcome == "finished"
    assert result.completed.audio_bytes == len(result.audio) == record.audio_bytes > 0
    assert sha256(result.audio) == record.audio_sha256


async def test_send_after_cancel_fails_locally(client: AsyncSynthesizerClient) -> None:
    """After cancel(), a send raises StreamStateError instead of reaching gRPC."""
    stream = await client.open_stream(timeout=scaled(20))
    await stream.send_text("Never mind.")
    assert stream.cancel()
    with pytest.raises(StreamStateError, match=r"send_text\(\) after cancel\(\)"):
        await stream.send_text("Still there?")


async def test_refused_streams_with_queued_text_report_the_servers_status(
    client: AsyncSynthesizerClient,
) -> None:
    """200 streams refused (volume 101) while 20 fragments each are queued: all INVALID_ARGUMENT.

    grpcio's asyncio stack turns a write that races the refusal into INTERNAL
    "Internal error from Core" (grpc/grpc#36066); the client must not let it.
    """
    bad = pb.SynthesisConfig(volume=101)
    fragments = [f"Fragment {i} of a refused stream. " for i in range(20)]

    async def stream_texts() -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stream_texts(fragments, bad, timeout=scaled(30))
        assert "config.volume" in (info.value.details() or "")
        return info.value.code()

    async def open_stream() -> grpc.StatusCode:
        stream = await client.open_stream(bad, timeout=scaled(30))

        async def write() -> None:
            for fragment in fragments:
                await stream.send_text(fragment)
            await stream.finish()

        writer = asyncio.create_task(write())
        with pytest.raises(grpc.aio.AioRpcError) as read_error:
            await stream.collect()
        with pytest.raises(grpc.aio.AioRpcError) as write_error:
            await writer
        assert write_error.value.code() is read_error.value.code()
        return read_error.value.code()

    codes = await asyncio.gather(
        *(stream_texts() for _ in range(100)), *(open_stream() for _ in range(100))
    )
    assert collections.Counter(codes) == {grpc.StatusCode.INVALID_ARGUMENT: 200}


# ------------------------------------------------------------------ retries


async def _hold_the_only_connection(
    client: AsyncSynthesizerClient,
) -> tuple[StreamingCall, AsyncIterator[pb.SynthesizeResponse]]:
    """Open a stream that holds the pool's one connection until it is finished."""
    holder = await client.open_stream(timeout=scaled(30))
    await holder.send_text("Holding the only connection.")
    responses = aiter(holder)
    assert (await anext(responses)).WhichOneof("response") == "started"
    return holder, responses


async def _refused_once(server: SidecarServer) -> float:
    """Wait until a call has waited for a connection and given up; return when it did."""
    await eventually(lambda: server.pool.status().waiters == 1, what="a call waiting")
    await eventually(lambda: server.pool.status().waiters == 0, what="the wait given up")
    return time.monotonic()


async def test_refused_call_is_retried_after_the_pushback(start_sidecar: StartSidecar) -> None:
    """RESOURCE_EXHAUSTED (pool of 1 busy) is retried after the server's 1 s pushback, and succeeds.

    Without the pushback gRPC would retry within its 0.1 s initial backoff,
    while the pool is still busy.
    """
    server = await start_sidecar(pool_min_idle=1, pool_max_size=1, acquire_timeout_s=scaled(0.5))
    async with AsyncSynthesizerClient(server.address) as client:
        holder, held = await _hold_the_only_connection(client)
        call = asyncio.create_task(client.synthesize("Second in line.", timeout=scaled(30)))
        refused_at = await _refused_once(server)
        await holder.finish()
        async for _ in held:
            pass
        result = await call
    waited = time.monotonic() - refused_at
    assert result.completed.audio_bytes == len(result.audio) > 0
    assert waited >= 0.9, f"retried {waited:.2f}s after the refusal, before the 1 s pushback"


async def test_call_failing_after_audio_is_not_retried(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """A task that fails after its first audio ends the call UNAVAILABLE, with one upstream task."""
    server = await start_sidecar()
    emulator.update_knobs(fail_mid_every=1)
    before = len(emulator.stats.tasks)
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream(timeout=scaled(20))
        await stream.send_text("This will break after the first audio.")
        await stream.finish()
        kinds: list[str] = []

        async def read() -> None:
            async for response in stream:
                kinds.append(str(response.WhichOneof("response")))

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read()
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "audio" in kinds, kinds
    await asyncio.sleep(scaled(1.0))  # ample time for a retry that must not come
    assert len(emulator.stats.tasks) == before + 1, emulator.stats.tasks[before:]
    assert PUSHBACK_KEY not in trailers(info.value)


def trailers(error: grpc.aio.AioRpcError) -> dict[str, str | bytes]:
    """The trailing metadata of a failed call."""
    return dict(error.trailing_metadata() or ())


async def test_without_retries_a_refusal_shows_the_pushback_and_the_request_id(
    start_sidecar: StartSidecar,
) -> None:
    """retry=False: RESOURCE_EXHAUSTED surfaces, with no headers, a 1000 ms pushback and the id."""
    server = await start_sidecar(pool_min_idle=1, pool_max_size=1, acquire_timeout_s=scaled(0.3))
    async with (
        AsyncSynthesizerClient(server.address) as holding,
        grpc.aio.insecure_channel(server.address, options=channel_options(retry=False)) as channel,
    ):
        holder, held = await _hold_the_only_connection(holding)
        call = pb_grpc.SynthesizerStub(channel).Synthesize(  # the raw call, to read its headers
            pb.SynthesizeRequest(text="Refused."), metadata=(("x-request-id", "refused-1"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert len(await call.initial_metadata()) == 0
        await holder.finish()
        async for _ in held:
            pass
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers(info.value)[PUSHBACK_KEY] == "1000"
    assert trailers(info.value)["x-request-id"] == "refused-1"


async def test_unavailable_before_audio_has_a_short_pushback(start_sidecar: StartSidecar) -> None:
    """A draining sidecar's UNAVAILABLE carries a 200 ms pushback; INVALID_ARGUMENT none."""
    server = await start_sidecar()
    async with AsyncSynthesizerClient(server.address, retry=False) as client:
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await client.synthesize("Too loud.", pb.SynthesisConfig(volume=101))
        server.servicer.start_draining()
        with pytest.raises(grpc.aio.AioRpcError) as draining:
            await client.synthesize("Too late.", metadata=[("x-request-id", "late-1")])
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert PUSHBACK_KEY not in trailers(invalid.value)
    assert trailers(invalid.value)["x-request-id"]  # a generated one: the caller sent none
    assert draining.value.code() is grpc.StatusCode.UNAVAILABLE
    assert trailers(draining.value)[PUSHBACK_KEY] == "200"
    assert trailers(draining.value)["x-request-id"] == "late-1"


def test_service_config_is_the_documented_policy() -> None:
    """The channels' service config retries UNAVAILABLE and RESOURCE_EXHAUSTED, 3 attempts."""
    config = json.loads(SERVICE_CONFIG)
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "cosyvoice.sidecar.v1.Synthesizer"}]
    policy = method["retryPolicy"]
    assert policy["maxAttempts"] == 3
    assert sorted(policy["retryableStatusCodes"]) == ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]
    assert channel_options() == [("grpc.service_config", SERVICE_CONFIG)]
    assert channel_options(retry=False) == [("grpc.enable_retries", 0)]

"""The ``cosyvoice-sidecar`` command as users run it: real subprocesses, real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import wave
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.config import OPTIONS
from tests.processes import Process, emulator_stats

SECRET = "sk-do-not-print-me-1234567890"


def test_serve_without_a_key_exits_2_saying_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key and no --emulator: exit 2 naming DASHSCOPE_API_KEY and DASHSCOPE_API_KEY_FILE."""
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("DASHSCOPE_API_KEY_FILE", raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "DASHSCOPE_API_KEY" in err
    assert "DASHSCOPE_API_KEY_FILE" in err


@pytest.mark.parametrize("value", ["-1", "1001"])
def test_audio_batch_out_of_range_exits_2_naming_the_setting(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """--audio-batch-ms outside 0..1000 is refused before anything starts."""
    assert main(["serve", "--emulator", f"--audio-batch-ms={value}"]) == 2
    assert '"audio_batch_ms" must be between 0 and 1000' in capsys.readouterr().err


def test_help_names_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """serve --help lists each flag's environment variable and default."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for option in OPTIONS:
        assert option.flag in out
        assert f"env {option.env}; default {option.default}" in out


def test_readme_configuration_table_matches_the_options() -> None:
    """Every option's flag, variable, default and --help text is a row of the README's table."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for option in OPTIONS:
        meaning = option.help.replace("%%", "%")
        row = f"| `{option.flag}` | `{option.env}` | `{option.default}` | {meaning} |"
        assert row in readme, row


async def test_serve_against_a_separately_started_upstream(tmp_path: Path) -> None:
    """The emulator is just a URL: serve --upstream-url + DASHSCOPE_API_KEY, then say."""
    async with Process("emulate", "--port", "0", "--api-key", SECRET) as upstream:
        url = (await upstream.expect(r"emulator on (\S+)")).group(1)
        async with Process(
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream-url",
            url,
            "--pool-min-idle",
            "2",
            env={"DASHSCOPE_API_KEY": SECRET},
        ) as server:
            address = (await server.expect(r"serving on (\S+)")).group(1)
            output = tmp_path / "hello.wav"
            async with Process("say", "--addr", address, "-o", str(output), "Hello, world.") as say:
                code, out, err = await say.finish()
            assert code == 0, err
            assert "first audio after" in out
            with wave.open(str(output)) as wav:
                assert wav.getframerate() == 22050
                frames = wav.readframes(wav.getnframes())
            stats = await asyncio.to_thread(emulator_stats, url)
            task = stats["tasks"][-1]
            assert task["outcome"] == "finished"
            assert hashlib.sha256(frames).hexdigest() == task["audio_sha256"]
            # The two warm sockets, plus the spare kept above the one the call used.
            assert stats["connections_opened"] == 3
            assert await server.stop() == 0
            _, _, server_log = await server.finish()
            assert SECRET not in server_log
        await upstream.stop()


async def test_serve_with_the_embedded_emulator(tmp_path: Path) -> None:
    """serve --emulator prints its emulator URL and address, and synthesizes."""
    async with Process("serve", "--emulator", "--listen", "127.0.0.1:0") as server:
        await server.expect(r"emulator on ws://127\.0\.0\.1:\d+/api-ws/v1/inference")
        address = (await server.expect(r"serving on (127\.0\.0\.1:\d+)")).group(1)
        output = tmp_path / "say.wav"
        async with Process("say", "--addr", address, "-o", str(output), "Testing.") as say:
            code, _, err = await say.finish()
        assert code == 0, err
        assert output.read_bytes()[:4] == b"RIFF"
        assert await server.stop() == 0

"""``python -m sidecar.emulator`` as a real subprocess: announce, serve, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys

from tests.timing import scaled


async def _get(host: str, port: int, target: str) -> dict[str, object]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    result: dict[str, object] = json.loads(body)
    return result


async def test_module_prints_its_url_serves_and_stops_on_sigterm() -> None:
    """It prints 'emulator on ws://...', applies flags, and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.emulator",
        "--port=0",
        "--realtime-factor=0.5",
        "--reject-voice=nobody",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(scaled(10)):
            line = (await proc.stdout.readline()).decode()
        match = re.fullmatch(r"emulator on ws://127\.0\.0\.1:(\d+)/api-ws/v1/inference\n", line)
        assert match, line
        knobs = await _get("127.0.0.1", int(match.group(1)), "/_emulator/knobs")
        assert knobs["realtime_factor"] == 0.5
        assert knobs["rejected_voices"] == ["nobody"]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(scaled(10)):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_module_refuses_a_bad_flag_value() -> None:
    """An invalid knob value exits 2 with a message naming the knob."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.emulator",
        "--knob",
        "chunk_ms=0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(scaled(10)):
        _, stderr = await proc.communicate()
    assert proc.returncode == 2
    assert b"chunk_ms" in stderr

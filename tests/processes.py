"""Running ``cosyvoice-sidecar`` as a real subprocess, with bounded waits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.timing import scaled

__all__ = ["SIDECAR_BIN", "Process", "emulator_stats"]

SIDECAR_BIN = str(Path(sys.executable).parent / "cosyvoice-sidecar")


class Process:
    """A ``cosyvoice-sidecar`` subprocess whose stdout lines can be awaited.

    stderr (the logs) goes to a temporary file, not a pipe: nobody reads it
    while the test runs, and a full pipe would stall a chatty process.
    """

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.args = [SIDECAR_BIN, *args]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
        self.env.update(env or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __aexit__

    async def __aenter__(self) -> Self:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr_file,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._stderr_file.close()

    async def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Read stdout until a line matches ``pattern``; fail after ``timeout`` seconds."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        regex = re.compile(pattern)
        async with asyncio.timeout(scaled(timeout)):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    stderr = await self._stderr()
                    raise AssertionError(f"process ended before {pattern!r}:\n{stderr}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                match = regex.search(line)
                if match:
                    return match

    async def stop(self, timeout: float = 15.0) -> int:
        """Send SIGTERM and return the exit code (bounded)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(scaled(timeout)):
            return await self.proc.wait()

    async def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """Wait for the process to end; return (exit code, stdout, stderr)."""
        assert self.proc is not None
        async with asyncio.timeout(scaled(timeout)):
            out, _ = await self.proc.communicate()
        return self.proc.returncode or 0, out.decode(), await self._stderr()

    async def _stderr(self) -> str:
        """What the process wrote to stderr so far."""
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")


def emulator_stats(ws_url: str) -> dict[str, Any]:
    """Fetch the emulator's counters over its plain-HTTP stats endpoint."""
    http = re.sub(r"^ws://([^/]+)/.*$", r"http://\1/_emulator/stats", ws_url)
    with urllib.request.urlopen(http, timeout=scaled(5)) as response:  # noqa: S310 - loopback
        result: dict[str, Any] = json.loads(response.read())
    return result

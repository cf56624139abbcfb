"""The bench's subprocesses, their ``/proc`` counters, and the emulator's HTTP endpoints.

Every child runs ``sys.executable`` (the same Python and packages as the
bench) unless given another program (the Go load generator, py-spy), its
stderr goes to a log file (a full pipe would stall it), and every
wait on it is bounded: a child that does not answer in time is killed and the
run is recorded as failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

__all__ = [
    "Child",
    "ChildError",
    "EmulatorClient",
    "cpu_seconds",
    "machine_busy_seconds",
    "main_thread_cpu_seconds",
    "main_thread_waits",
    "peak_rss_mb",
]

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
# JSON result lines carry every sample of a run: allow lines of a few MiB.
_LINE_LIMIT: Final = 1 << 26


class ChildError(RuntimeError):
    """Raised when a child process dies, says something unexpected, or does not answer in time."""


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds ``pid`` has used (all its threads), from /proc."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of ``pid``'s main thread alone (its thread id is its pid).

    In the sidecar and the asyncio client modes the main thread runs the event
    loop, so its share of one core says how close the loop is to saturation,
    which the process total (gRPC's poller and other threads included) hides.
    """
    return _stat_cpu_seconds(Path(f"/proc/{pid}/task/{pid}/stat"))


def main_thread_waits(pid: int) -> int:
    """Return how often ``pid``'s main thread has blocked (its voluntary context switches).

    An event loop's thread blocks when it has nothing to run (in epoll_wait,
    until a socket or its self-pipe wakes it) and when it waits for the GIL;
    per task, this counts the wake-ups the loop paid for, a cost that grows
    when the streams' frames arrive spread out instead of together.
    """
    try:
        text = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _stat_cpu_seconds(path: Path) -> float:
    try:
        text = path.read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def machine_busy_seconds() -> float:
    """Return the CPU seconds all processes on the machine have used (all cores), from /proc.

    Busy = user + nice + system + irq + softirq; idle, iowait and steal are not.
    The bench subtracts its own processes to show how much CPU others took.
    """
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in line.split()[1:8])
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """Return the peak resident set size of ``pid`` in MiB (VmHWM), 0 if unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The bench's environment without DashScope settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    env.update(extra or {})
    return env


class Child:
    """One subprocess whose stdout lines the bench reads, with bounded waits.

    It runs ``program`` (default: this Python interpreter) with ``args``.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        program: str | None = None,
    ) -> None:
        self.name = name
        self.args = [program or sys.executable, *args]
        self.log_path = log_dir / f"{name}.log"
        self._env = child_env(env)
        self._stdin = stdin
        self._log: IO[bytes] | None = None
        self.proc: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else f"pid {self.proc.pid}"
        return f"<Child {self.name} {state}>"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            env=self._env,
            stdin=asyncio.subprocess.PIPE if self._stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            limit=_LINE_LIMIT,
        )

    async def line(self, timeout: float) -> str:
        """Return the next stdout line; raise ChildError on EOF or after ``timeout`` seconds."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                raw = await self.proc.stdout.readline()
        except TimeoutError:
            raise ChildError(f"{self.name}: no output within {timeout:g}s") from None
        if not raw:
            code = await self._exit_code()
            raise ChildError(f"{self.name} exited ({code}) early; see {self.log_path}")
        return raw.decode().rstrip("\n")

    async def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Read lines until one matches ``pattern``, within ``timeout`` seconds in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        regex = re.compile(pattern)
        while True:
            line = await self.line(max(0.0, deadline - loop.time()))
            match = regex.search(line)
            if match:
                return match

    async def json_line(self, event: str, timeout: float) -> dict[str, Any]:
        """Read the next line as a JSON object with ``"event": event``."""
        line = await self.line(timeout)
        try:
            data = json.loads(line)
        except ValueError:
            raise ChildError(f"{self.name}: expected JSON, got {line[:200]!r}") from None
        if not isinstance(data, dict) or data.get("event") != event:
            raise ChildError(f"{self.name}: expected a {event!r} line, got {line[:200]!r}")
        return data

    async def send(self, text: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        await self.proc.stdin.drain()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code. Never raises."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    async def wait(self, timeout: float) -> int | None:
        """Wait for the child to exit by itself; kill it after ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    async def _exit_code(self) -> int | None:
        assert self.proc is not None
        try:
            async with asyncio.timeout(5):
                return await self.proc.wait()
        except TimeoutError:
            return None


class EmulatorClient:
    """The emulator's plain-HTTP control endpoints (loopback only)."""

    def __init__(self, ws_url: str) -> None:
        match = re.match(r"^ws://([^/]+)/", ws_url)
        if not match:
            raise ValueError(f"not an emulator URL: {ws_url}")
        self.ws_url = ws_url
        self.base = f"http://{match.group(1)}/_emulator"

    async def stats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._get, "/stats")

    async def knobs(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._get, "/knobs")

    async def update_knobs(self, **values: str) -> dict[str, Any]:
        """Change knobs of the running emulator (string values, as its HTTP endpoint takes)."""
        return await asyncio.to_thread(self._get, "/knobs?" + urllib.parse.urlencode(values))

    async def wait_quiet(self, timeout: float) -> dict[str, Any]:
        """Wait until no task runs on the emulator (the previous run is over); return the stats."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stats = await self.stats()
            if stats["running_tasks"] == 0 or loop.time() >= deadline:
                return stats
            await asyncio.sleep(0.1)

    def _get(self, path: str) -> dict[str, Any]:
        url = self.base + path
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
            data: dict[str, Any] = json.loads(response.read())
        return data

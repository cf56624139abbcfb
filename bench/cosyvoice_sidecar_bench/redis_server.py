"""A throwaway ``redis-server`` for the fleet quota: a free loopback port, no persistence.

The fleet modes need what a fleet of sidecars shares in production: one Redis.
Debian's ``redis-server`` (``make packages`` installs it) runs as a child of
the bench with its log in the run's log directory, and is stopped with it.
Redis cannot report a port it picked itself, so a free port is found first
and the start is retried should another process take it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path
from typing import IO, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["RedisServer", "RedisUnavailable"]

_ATTEMPTS: Final = 5
_START_TIMEOUT_S: Final = 10.0


class RedisUnavailable(RuntimeError):
    """Raised when ``redis-server`` is not installed or does not start."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; use as ``async with``."""

    def __init__(self, log_dir: Path) -> None:
        self.port = 0
        self._log_path = log_dir / "redis-server.log"
        self._log: IO[bytes] | None = None
        self._proc: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        return f"<RedisServer port={self.port} {'running' if self._proc else 'stopped'}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def missing() -> str | None:
        """Return why no Redis can start here, or None if it can."""
        if shutil.which("redis-server") is None:
            return (
                "the fleet modes need redis-server on PATH (Debian's redis-server package; "
                "`make packages` installs it)"
            )
        return None

    async def __aenter__(self) -> RedisServer:
        problem = self.missing()
        if problem:
            raise RedisUnavailable(problem)
        self._log = self._log_path.open("ab")
        for _ in range(_ATTEMPTS):
            if await self._start(_free_port()):
                return self
        await self.__aexit__()
        raise RedisUnavailable(f"redis-server did not start; see {self._log_path}")

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def _start(self, port: int) -> bool:
        binary = shutil.which("redis-server")
        assert binary is not None
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            "--loglevel",
            "warning",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self.port = port
        client = Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                while self._proc.returncode is None:
                    with contextlib.suppress(RedisError, OSError):
                        if await client.ping():
                            return True
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        finally:
            await client.aclose()
        await self._stop()  # it exited (the port was taken) or never answered
        return False

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

"""A throwaway ``redis-server`` for the fleet quota: a free loopback port, no persistence.

The fleet modes (and the fleet tests, which use this one) need what a fleet of
sidecars shares in production: one Redis. Debian's ``redis-server`` (``make
packages`` installs it) runs as a child process with its log in a file, and is
stopped with it. Redis cannot listen on port 0 and report the port it got, so
a free port is picked first and the start retried should another process take
it meanwhile. :meth:`RedisServer.stop` then :meth:`RedisServer.start` keep the
port: a restarted Redis, its data lost, as one without AOF/RDB in production.
Optionally with a password, or TLS only (``rediss://`` URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import tempfile
from pathlib import Path
from typing import IO, Final, Protocol

__all__ = ["RedisServer", "RedisTls", "RedisUnavailable"]

_ATTEMPTS: Final = 5


class RedisUnavailable(RuntimeError):
    """Raised when ``redis-server`` is not installed or does not start."""


class RedisTls(Protocol):
    """PEM files for a TLS-only server: its CA, certificate and key."""

    @property
    def ca(self) -> Path: ...
    @property
    def cert(self) -> Path: ...
    @property
    def key(self) -> Path: ...


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; :meth:`start`/:meth:`close`, or ``async with``.

    ``timeout_s`` bounds the start and the stop; ``log_path`` keeps its log
    (else a temporary file).
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        password: str | None = None,
        tls: RedisTls | None = None,
        log_path: Path | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.binary = binary or shutil.which("redis-server") or ""
        self.password = password
        self.tls = tls
        self.port: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._timeout_s = timeout_s
        self._log: IO[bytes] = (
            log_path.open("ab") if log_path is not None else tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        )

    def __repr__(self) -> str:
        running = self.proc is not None and self.proc.returncode is None
        return f"<RedisServer port={self.port} {'running' if running else 'stopped'}>"

    @property
    def url(self) -> str:
        assert self.port is not None
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @staticmethod
    def missing() -> str | None:
        """Return why no Redis can start here, or None if it can."""
        if shutil.which("redis-server") is None:
            return (
                "the fleet quota needs redis-server on PATH (Debian's redis-server package; "
                "`make packages` installs it)"
            )
        return None

    async def __aenter__(self) -> RedisServer:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start on the port used before, or on a free one (retrying on a collision).

        Raises :class:`RedisUnavailable` when there is no ``redis-server`` or it
        does not answer in time.
        """
        if not self.binary:
            raise RedisUnavailable(self.missing() or "no redis-server")
        fixed = self.port is not None
        for _ in range(_ATTEMPTS):
            port = self.port if self.port is not None else _free_port()
            if await self._start_on(port):
                self.port = port
                return
            if fixed:
                break
        raise RedisUnavailable(f"redis-server did not start:\n{self.log()}")

    async def stop(self) -> None:
        """SIGTERM and wait (bounded); SIGKILL if it does not go."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(self._timeout_s):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        await self.stop()
        self._log.close()

    def log(self) -> str:
        """What the server logged (warnings and errors)."""
        self._log.flush()
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0)
            return self._log.read().decode(errors="replace")
        return ""

    async def _start_on(self, port: int) -> bool:
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"]
            listen += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            listen += ["--tls-ca-cert-file", str(self.tls.ca)]
        else:
            listen = ["--port", str(port)]
        args = [*listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, *args, stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                while self.proc.returncode is None:
                    if await self._answers(port):
                        return True
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await self.proc.wait()
        except TimeoutError:
            await self.stop()
            raise RedisUnavailable(f"redis-server did not answer in time:\n{self.log()}") from None
        return False  # it exited: most likely the port was taken meanwhile

    async def _answers(self, port: int) -> bool:
        try:
            context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            async with asyncio.timeout(min(2.0, self._timeout_s)):
                line = await reader.readline()
            # Without AUTH a password-protected server answers -NOAUTH: it is up too.
            return line.startswith((b"+PONG", b"-NOAUTH"))
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

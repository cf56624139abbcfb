"""A real ``redis-server`` on a free loopback port, started and stopped with bounded waits.

Redis cannot listen on port 0 and report the port it got, so a free port is
picked (bind port 0, read it, close) and the start is retried on a collision.
No persistence: stopping the server loses its data, as a restarted Redis
without AOF/RDB does in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import tempfile
from typing import IO

from tests.fleet.tls import ServerTls
from tests.timing import scaled

__all__ = ["RedisServer"]

_START_ATTEMPTS = 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process; :meth:`stop` and :meth:`start` again keep the port."""

    def __init__(
        self, binary: str, *, password: str | None = None, tls: ServerTls | None = None
    ) -> None:
        self.binary = binary
        self.password = password
        self.tls = tls  # TLS only (no plain port): rediss:// URLs
        self.port: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()

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

    async def start(self) -> None:
        """Start on the port used before, or on a free one (retrying on a collision)."""
        fixed = self.port is not None
        for _ in range(_START_ATTEMPTS):
            port = self.port if self.port is not None else _free_port()
            if await self._start_on(port):
                self.port = port
                return
            if fixed:
                break
        raise AssertionError(f"redis-server did not start:\n{self.log()}")

    async def _start_on(self, port: int) -> bool:
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"]
            listen += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            listen += ["--tls-ca-cert-file", str(self.tls.ca)]
        else:
            listen = ["--port", str(port)]
        args = [
            self.binary,
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        try:
            async with asyncio.timeout(scaled(10)):
                while self.proc.returncode is None:
                    if await self._answers(port):
                        return True
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await self.proc.wait()
        except TimeoutError:
            await self.stop()
            raise AssertionError(f"redis-server did not answer in time:\n{self.log()}") from None
        return False  # it exited: most likely the port was taken meanwhile

    async def _answers(self, port: int) -> bool:
        try:
            context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            async with asyncio.timeout(scaled(2)):
                line = await reader.readline()
            # Without AUTH a password-protected server answers -NOAUTH: it is up too.
            return line.startswith((b"+PONG", b"-NOAUTH"))
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        """SIGTERM and wait (bounded); SIGKILL if it does not go."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(scaled(10)):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def close(self) -> None:
        await self.stop()
        self._log.close()

"""Upstreams that misbehave below the protocol: a black hole, and an emulator process to kill.

The emulator's knobs script faults inside the protocol; these two make the
faults a network or a host makes: a peer that takes the TCP connection and
never answers, and a process that dies with SIGKILL (its sockets reset by the
kernel) and comes back on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from tests.processes import Process, emulator_stats
from tests.timing import scaled

__all__ = ["Blackhole", "EmulatorProcess", "free_port"]


class Blackhole:
    """A TCP server on 127.0.0.1 that reads everything and never writes a byte.

    :meth:`forward_to` turns it into a plain forwarder to another port for the
    connections that arrive from then on, so the same URL can be broken and
    then mended. :attr:`silent` counts the unanswered connections still open.
    """

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._target: int | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.silent = 0
        self.port = 0

    def url(self, path: str = "/api-ws/v1/inference") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def forward_to(self, port: int) -> None:
        """Forward the connections accepted from now on to 127.0.0.1:``port``."""
        self._target = port

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            if self._target is None:
                self.silent += 1
                try:
                    while await reader.read(65536):
                        pass  # swallow the handshake and whatever follows; never answer
                finally:
                    self.silent -= 1
            else:
                await self._forward(reader, writer, self._target)
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        self._writers.add(up_writer)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.transport.abort()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the emulator re-binds it with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmulatorProcess:
    """``cosyvoice-sidecar emulate`` on a fixed port, as its own process: kill -9, start again."""

    def __init__(self, port: int, *flags: str) -> None:
        self.port = port
        self.flags = flags
        self.url = f"ws://127.0.0.1:{port}/api-ws/v1/inference"
        self._process: Process | None = None

    async def start(self) -> None:
        """Start it and wait for its ready line."""
        process = Process("emulate", "--port", str(self.port), *self.flags)
        await process.__aenter__()
        self._process = process
        await process.expect(r"emulator on ws://")

    def kill(self) -> None:
        """SIGKILL: no close frame, no FIN from the process; the kernel resets its sockets."""
        assert self._process is not None
        assert self._process.proc is not None
        self._process.proc.kill()

    async def stop(self) -> None:
        """Reap the process, whatever state it is in (bounded)."""
        process, self._process = self._process, None
        if process is not None:
            await process.__aexit__(None, None, None)

    async def stats(self) -> dict[str, Any]:
        """Its counters over HTTP, fetched off the event loop."""
        return await asyncio.wait_for(asyncio.to_thread(emulator_stats, self.url), scaled(10))

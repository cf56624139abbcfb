"""A TCP proxy on 127.0.0.1 that can kill connections the way networks do."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; :meth:`break_on_next_send` arms a silent drop.

    A socket the proxy drops looks open to its client until the client sends:
    the case a pool cannot see without a round trip.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._break_next = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.port = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for client, upstream in list(self._pairs):
            client.transport.abort()
            upstream.transport.abort()
        await self._server.wait_closed()

    def url(self, path: str = "/api-ws/v1/inference") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def break_on_next_send(self, count: int = 1) -> None:
        """The next ``count`` client writes (on any connection) abort that connection."""
        self._break_next = count

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, from_client=True, client=writer),
                self._pump(up_reader, writer, from_client=False, client=writer),
            )
        finally:
            self._pairs.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        from_client: bool,
        client: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await source.read(65536):
                if from_client and self._break_next > 0:
                    self._break_next -= 1
                    client.transport.abort()  # RST to the client; nothing reaches upstream
                    sink.transport.abort()
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()

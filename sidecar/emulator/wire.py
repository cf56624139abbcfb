"""Server frames written to a connection in bursts: one system call for several frames.

A task's audio goes out as pairs, a ``sentence-synthesis`` event then one
binary frame (§6), and at 400 concurrent streams the emulator writes tens of
thousands of frames a second. Sending each through ``ServerConnection.send``
costs a ``send()`` system call per frame (on loopback the kernel also does the
receiver's work on that call) plus an async context manager. :class:`FrameSink`
instead queues the frames of one burst and writes them with a single
``transport.write``: the bytes on the wire are the same frames, in the same
order, only fewer TCP segments carry them.

The emulator negotiates no extension (``compression=None``), so a server
frame is a header that depends only on the opcode and the length, then the
payload, unmasked. The headers come from websockets' own serializer, cached
per length (audio frames repeat a few lengths), so the framing stays the
library's. Frames are written only while the connection is OPEN, as ``send``
would; on a closing connection ``send`` itself raises
:exc:`~websockets.exceptions.ConnectionClosed`.
"""

from __future__ import annotations

import functools
from typing import Final, NoReturn

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["BINARY", "TEXT", "FrameSink", "Payload", "frame_header"]

TEXT: Final = Opcode.TEXT
BINARY: Final = Opcode.BINARY

Payload = bytes | memoryview


@functools.lru_cache(maxsize=1024)
def frame_header(opcode: Opcode, length: int) -> bytes:
    """Return the header websockets writes before an unmasked, final ``length``-byte frame.

    It is websockets' serialization of such a frame without its payload.
    """
    serialized = Frame(opcode, bytes(length)).serialize(mask=False)
    return serialized[: len(serialized) - length]


class FrameSink:
    """Queues whole frames for one connection; :meth:`flush` writes them at once.

    The queue must be flushed before the writer awaits anything else, so no
    other writer (the session, websockets' own control frames) can come
    between two queued frames or overtake them.
    """

    def __init__(self, connection: ServerConnection) -> None:
        if connection.protocol.extensions:  # pragma: no cover - the emulator negotiates none
            raise ValueError("FrameSink writes plain frames: no WebSocket extension allowed")
        self._ws = connection
        self._parts: list[Payload] = []
        self.pending_bytes = 0

    @property
    def pending(self) -> bool:
        """Whether frames wait for :meth:`flush`."""
        return bool(self._parts)

    def text(self, payload: bytes) -> None:
        """Queue a text frame; ``payload`` is UTF-8 already."""
        self.add(frame_header(TEXT, len(payload)), payload)

    def add(self, *parts: Payload) -> None:
        """Queue whole frames given as parts: headers from :func:`frame_header`, payloads.

        Payloads must not change until flushed.
        """
        self._parts += parts
        self.pending_bytes += sum(map(len, parts))

    def write_now(self) -> bool:
        """Write the queued frames if that needs no waiting.

        Return True when the writer may go on: everything was written and the
        transport holds nothing back. Otherwise :meth:`flush` must be awaited
        (frames stay queued when the connection is not open).
        """
        transport = self._ws.transport
        if self._parts:
            if self._ws.protocol.state is not State.OPEN:
                return False
            self._write()
        return not (transport.get_write_buffer_size() or transport.is_closing())

    async def flush(self) -> None:
        """Write the queued frames; raise ConnectionClosed if the connection is gone.

        Waits while the transport's buffer is above its high-water mark, like
        ``send`` does, so a client that stops reading stops the task.
        """
        if self.write_now():
            return
        if self._parts:  # kept by write_now: the connection is not open
            self._parts = []
            self.pending_bytes = 0
            await _closed(self._ws)
        try:
            await self._ws.drain()  # what send() does after writing
        except OSError:
            # The peer reset the connection while the buffer drained (a caller that
            # stopped reading, then hung up). send() reports that as ConnectionClosed,
            # and so must this: the task is then recorded as abandoned, not lost in a
            # traceback with its outcome still "running".
            await _closed(self._ws)

    def _write(self) -> None:
        data = b"".join(self._parts)
        self._parts = []
        self.pending_bytes = 0
        self._ws.transport.write(data)


async def _closed(ws: ServerConnection) -> NoReturn:
    """Raise what ``send`` raises on a connection that is no longer open.

    ``send`` then writes nothing: it waits until the connection is closed (the
    close timeout bounds it) and raises ConnectionClosed.
    """
    await ws.send(b"")
    raise AssertionError(f"send() on a {ws.protocol.state.name} connection returned")

"""Server frames written to a connection in bursts: one system call for several frames.

A task's audio goes out as pairs, a ``sentence-synthesis`` event then one
binary frame (§6), and at 400 concurrent streams the emulator writes tens of
thousands of frames a second. Sending each through ``ServerConnection.send``
costs a ``send()`` system call per frame (on loopback the kernel also does the
receiver's work on that call) plus an async context manager. :class:`FrameSink`
instead queues the frames of one burst and writes them with a single
``transport.write``: the bytes on the wire are the same frames, in the same
order, only fewer TCP segments carry them.

The fast path is only taken in the state where ``send`` itself would write at
once: the connection OPEN, its transport not closing, no extensions (the
emulator negotiates none). Otherwise the queued frames go through ``send``
one by one, which raises :exc:`~websockets.exceptions.ConnectionClosed` exactly
as before.
"""

from __future__ import annotations

import struct
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.frames import Opcode
from websockets.protocol import State

__all__ = ["FrameSink", "frame_header"]

_FIN: Final = 0x80
_TEXT: Final = _FIN | Opcode.TEXT.value
_BINARY: Final = _FIN | Opcode.BINARY.value

Payload = bytes | memoryview


def frame_header(first_byte: int, length: int) -> bytes:
    """Return the header of an unmasked frame (RFC 6455 §5.2) carrying ``length`` bytes.

    ``first_byte`` is FIN and the opcode. Servers never mask, so the header
    only depends on the length: 7 bits, or 126 and 16 bits, or 127 and 64 bits.
    """
    if length < 126:
        return bytes((first_byte, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first_byte, 126, length)
    return struct.pack("!BBQ", first_byte, 127, length)


class FrameSink:
    """Queues whole frames for one connection; :meth:`flush` writes them at once.

    The queue must be flushed before the writer awaits anything else, so no
    other writer (the session, websockets' own control frames) can come
    between two queued frames or overtake them.
    """

    def __init__(self, connection: ServerConnection) -> None:
        self._ws = connection
        self._frames: list[tuple[int, Payload]] = []
        self.pending_bytes = 0

    @property
    def pending(self) -> bool:
        """Whether frames wait for :meth:`flush`."""
        return bool(self._frames)

    def text(self, payload: bytes) -> None:
        """Queue a text frame; ``payload`` is UTF-8 already."""
        self._frames.append((_TEXT, payload))
        self.pending_bytes += len(payload)

    def binary(self, payload: Payload) -> None:
        """Queue a binary frame; ``payload`` must not change until flushed."""
        self._frames.append((_BINARY, payload))
        self.pending_bytes += len(payload)

    def write_now(self) -> bool:
        """Write the queued frames if that needs no waiting.

        Return True when the writer may go on: everything was written and the
        transport holds nothing back. Otherwise :meth:`flush` must be awaited
        (frames the fast path could not take are still queued).
        """
        if self._frames:
            if not self._fast_path():
                return False
            self._write()
        return not self._ws.transport.get_write_buffer_size()

    async def flush(self) -> None:
        """Write the queued frames; raise ConnectionClosed if the connection is gone.

        Waits while the transport's buffer is above its high-water mark, like
        ``send`` does, so a client that stops reading stops the task.
        """
        if self._frames:
            if not self._fast_path():
                frames = self._frames
                self._frames = []
                self.pending_bytes = 0
                for first_byte, payload in frames:
                    await self._ws.send(payload, text=first_byte == _TEXT)
                return
            self._write()
        if self._ws.transport.get_write_buffer_size():
            await self._ws.drain()

    def _fast_path(self) -> bool:
        """Whether ``send`` would write at once: the connection open, no extension."""
        protocol = self._ws.protocol
        return (
            protocol.state is State.OPEN
            and not self._ws.transport.is_closing()
            and not protocol.extensions
        )

    def _write(self) -> None:
        wire: list[Payload] = []
        for first_byte, payload in self._frames:
            wire.append(frame_header(first_byte, len(payload)))
            wire.append(payload)
        self._frames = []
        self.pending_bytes = 0
        self._ws.transport.write(b"".join(wire))

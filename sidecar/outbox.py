"""The outbox: what a session's pumps hand the gRPC writer, in order, bounded.

The upstream reader and the caller's feeder put audio frames, ready responses,
a flush acknowledgement, the end of the task or an error; the writer takes
responses out. The queue is small: when the caller reads slowly it fills, the
reader stops reading the socket, and TCP pushes back on the upstream.

Audio frames become :class:`AudioChunk` responses here, and several frames may
become one chunk. Every gRPC message costs the sidecar and the caller far more
CPU than its bytes do, so merging pays, but it must never cost what the
sidecar is for (the first audio byte), so:

* frames that piled up while the caller read slowly go out as one chunk, at
  no latency cost (nothing waits for more);
* the first chunk of a call is never held;
* a later frame waits up to ``batch_ms`` for the frames after it only while
  the caller already holds at least twice that much audio beyond real time
  (audio sent minus time since the first chunk), so a caller that plays as it
  receives always keeps ``batch_ms`` of audio in hand, and audio arriving at
  real-time pace is never held. mp3 and opus, whose duration is unknown here,
  are never held;
* anything else that comes (a sentence's timing, a flush acknowledgement, the
  end of the task, an error) ends a hold at once: order is kept, and the last
  bytes of a task are never delayed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb

from sidecar.params import TaskParams

__all__ = ["Outbox"]

# Items between the pumps and the writer; with websockets' own frame queue this
# bounds a stream's memory when its caller stops reading.
_SIZE: Final = 4
# A merged chunk stops growing here: far below gRPC's 4 MiB message limit.
_MAX_CHUNK_BYTES: Final = 256 * 1024
_WAV_HEADER_BYTES: Final = 44


class _Done:
    """The task finished: every response has been queued."""


class _Flushed:
    """A flush went upstream; acknowledged in order with the audio."""


_Item = bytes | pb.SynthesizeResponse | _Flushed | _Done | BaseException


class Outbox:
    """The bounded, ordered queue between a session's pumps and its gRPC writer."""

    def __init__(self, params: TaskParams, *, batch_ms: float) -> None:
        self._params = params
        self._batch_ms = batch_ms
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(_SIZE)
        self._pending: _Item | None = None  # taken from the queue, not yet answered
        self._first_chunk_at: float | None = None
        self.chunks = 0  # audio chunks handed to the writer
        self.audio_bytes = 0  # audio bytes handed to the writer

    def __repr__(self) -> str:
        return (
            f"<Outbox queued={self._queue.qsize()} chunks={self.chunks} "
            f"audio_bytes={self.audio_bytes}>"
        )

    # ----------------------------------------------------------- the pumps' side

    async def put_audio(self, data: bytes) -> None:
        """Queue an upstream audio frame (waits while the outbox is full)."""
        await self._queue.put(data)

    async def put_response(self, response: pb.SynthesizeResponse) -> None:
        """Queue a ready response (a sentence's timing)."""
        await self._queue.put(response)

    async def put_flushed(self) -> None:
        """Queue the acknowledgement of a flush that went upstream."""
        await self._queue.put(_Flushed())

    async def put_done(self) -> None:
        """Mark the end of the task: :meth:`get` returns None after what is queued."""
        await self._queue.put(_Done())

    async def put_error(self, error: BaseException) -> None:
        """Queue an error: :meth:`get` raises it after what is queued."""
        await self._queue.put(error)

    def abort(self, error: BaseException) -> None:
        """Drop everything not yet taken; the next :meth:`get` raises ``error``. Never blocks."""
        self._pending = None
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(error)

    # ----------------------------------------------------------- the writer's side

    async def get(self) -> pb.SynthesizeResponse | None:
        """Return the next response, or None once the task is done; raise a queued error."""
        item = self._pending if self._pending is not None else await self._queue.get()
        self._pending = None
        if isinstance(item, bytes):
            parts = [item]
            self._pending = self._take_waiting_audio(parts)
            if self._pending is None and self._may_hold():
                self._pending = await self._hold_for_more_audio(parts)
            return self._audio_response(parts[0] if len(parts) == 1 else b"".join(parts))
        if isinstance(item, _Flushed):
            return pb.SynthesizeResponse(
                flushed=pb.FlushAcknowledged(audio_chunks_before=self.chunks)
            )
        if isinstance(item, _Done):
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def audio_ms(self) -> float:
        """Duration of the audio handed out so far (pcm and wav; else 0)."""
        return self._audio_ms(self.audio_bytes)

    def _take_waiting_audio(self, parts: list[bytes]) -> _Item | None:
        """Append the audio already queued; return the first other item."""
        while not self._queue.empty():
            following = self._queue.get_nowait()
            if not isinstance(following, bytes):
                return following
            parts.append(following)
        return None

    def _may_hold(self) -> bool:
        """Return True if the caller is far enough ahead for a chunk to wait (module doc)."""
        if self._batch_ms <= 0 or self._first_chunk_at is None:
            return False
        played_ms = (time.monotonic() - self._first_chunk_at) * 1000
        return self.audio_ms() - played_ms >= 2 * self._batch_ms

    async def _hold_for_more_audio(self, parts: list[bytes]) -> _Item | None:
        """Append the audio arriving within ``batch_ms``; return the first other item.

        Cancelling ``Queue.get`` loses no item, so the timeout is safe.
        """
        size = sum(map(len, parts))
        try:
            async with asyncio.timeout(self._batch_ms / 1000):
                while size < _MAX_CHUNK_BYTES:
                    following = await self._queue.get()
                    if not isinstance(following, bytes):
                        return following
                    parts.append(following)
                    size += len(following)
        except TimeoutError:
            pass
        return None

    def _audio_response(self, data: bytes) -> pb.SynthesizeResponse:
        before = self._audio_ms(self.audio_bytes)
        self.audio_bytes += len(data)
        duration = self._audio_ms(self.audio_bytes) - before
        chunk = pb.AudioChunk(data=data, sequence=self.chunks, duration_ms=duration)
        if self.chunks == 0:
            self._first_chunk_at = time.monotonic()
        self.chunks += 1
        return pb.SynthesizeResponse(audio=chunk)

    def _audio_ms(self, total_bytes: int) -> float:
        """Duration of the first ``total_bytes`` of the call's audio (a WAV header counts 0)."""
        if self._params.format == "wav":
            total_bytes = max(total_bytes - _WAV_HEADER_BYTES, 0)
        return self._params.audio_ms(total_bytes)

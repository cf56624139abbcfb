"""The response writer: a call's events become ``SynthesizeResponse`` messages on its stream.

This is the only place responses are built. It writes ``started`` first, then
every event of the call in order, and ``completed`` last; audio frames become
:class:`AudioChunk` responses, and several frames may become one chunk. Every
gRPC message costs the sidecar and the caller far more CPU than its bytes do,
so merging pays, but it must never cost what the sidecar is for (the first
audio byte), so:

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

A write waits while the caller does not read (HTTP/2 flow control): that is
the backpressure that stops the call reading the upstream. A caller that
leaves its audio unread for ``read_timeout_s`` fails the call with
:class:`~sidecar.errors.CallerStalled`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb

from sidecar.call import FINISHED, FLUSHED, Call, CallEvent, Sentence, Started, Watchdog
from sidecar.errors import CallerStalled
from sidecar.protocol import Word
from sidecar.rpc._config import FORMAT_ENUMS

__all__ = ["ResponseWriter"]

_Context = grpc.aio.ServicerContext[Any, pb.SynthesizeResponse]

# A merged chunk stops growing here (one more frame may end it, and DashScope's frames
# are a few KB; the upstream refuses any over 1 MiB): far below gRPC's 4 MiB message limit.
_MAX_CHUNK_BYTES: Final = 256 * 1024
_WAV_HEADER_BYTES: Final = 44


class ResponseWriter:
    """Writes one call's responses to its gRPC stream; see the module docstring."""

    def __init__(
        self,
        context: _Context,
        call: Call,
        *,
        batch_ms: float,
        read_timeout_s: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._context = context
        self._call = call
        self._params = call.params
        self._delivery = call.delivery
        self._batch_ms = batch_ms if call.params.format in ("pcm", "wav") else 0.0
        self._read_timeout_s = read_timeout_s
        self._metadata = metadata
        self._loop = asyncio.get_running_loop()
        self._writer: asyncio.Task[Any] | None = None
        self._stalled = False
        self._caller_watch = Watchdog(self._on_stalled)
        self._first_chunk_at: float | None = None

    def close(self) -> None:
        """Stop watching the caller (the call is over)."""
        self._caller_watch.cancel()

    @property
    def wrote_response(self) -> bool:
        """Whether a response (and so the response headers) went out."""
        return self._writer is not None

    async def started(self, started: Started) -> None:
        """Write the response headers and ``started``: the task runs upstream."""
        params = self._params
        response = pb.SynthesizeResponse(
            started=pb.Started(
                request_id=self._call.request_id,
                task_id=started.task_id,
                format=FORMAT_ENUMS[params.format],
                sample_rate_hz=params.sample_rate,
                model=params.model,
                voice=params.voice,
                warm_connection=started.warm,
                pool_wait_ms=started.pool_wait_ms,
            )
        )
        self._writer = asyncio.current_task()
        # Headers go with the first response, never before: a call that fails
        # earlier ends with trailers only, which gRPC clients may retry.
        await self._context.send_initial_metadata(self._metadata)
        await self._write(response)

    async def run(self) -> None:
        """Write every event of the call, then ``completed``; raise the call's error."""
        events = self._call.events
        pending: CallEvent | BaseException | None = None
        while True:
            event = pending if pending is not None else await events.get()
            pending = None
            if isinstance(event, BaseException):
                raise event  # after every response queued before it
            if isinstance(event, bytes):
                parts = [event]
                pending = self._take_waiting_audio(parts)
                if pending is None and self._may_hold():
                    pending = await self._hold_for_more_audio(parts)
                await self._write(self._audio(parts[0] if len(parts) == 1 else b"".join(parts)))
            elif isinstance(event, Sentence):
                await self._write(pb.SynthesizeResponse(sentence=_sentence(event)))
            elif event is FLUSHED:
                chunks = self._delivery.audio_chunks
                await self._write(
                    pb.SynthesizeResponse(flushed=pb.FlushAcknowledged(audio_chunks_before=chunks))
                )
            elif event is FINISHED:
                await self._write(self._completed())
                return

    # ------------------------------------------------------------------ writing

    async def _write(self, response: pb.SynthesizeResponse) -> None:
        """Write one response; the caller has ``read_timeout_s`` to take it."""
        self._caller_watch.set(self._loop.time() + self._read_timeout_s)
        try:
            await self._context.write(response)
        except asyncio.CancelledError as exc:
            if not self._stalled:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            raise CallerStalled(
                f"the caller left its audio unread for {self._read_timeout_s:g}s "
                "(--caller-read-timeout); the upstream was fine, the call was ended"
            ) from exc
        finally:
            self._caller_watch.set(None)

    def _on_stalled(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._stalled = True
            self._writer.cancel()  # _write turns this into CallerStalled

    def _completed(self) -> pb.SynthesizeResponse:
        call, delivery = self._call, self._delivery
        return pb.SynthesizeResponse(
            completed=pb.Completed(
                billed_characters=call.billed_characters,
                first_audio_ms=call.first_audio_ms,
                audio_duration_ms=delivery.audio_ms,
                audio_bytes=delivery.audio_bytes,
                audio_chunks=delivery.audio_chunks,
                request_uuid=call.request_uuid,
            )
        )

    # ------------------------------------------------------------------- audio

    def _take_waiting_audio(self, parts: list[bytes]) -> CallEvent | BaseException | None:
        """Append the audio already queued, until the chunk reaches its bound; return the
        first other event (or error) taken meanwhile."""
        size = sum(map(len, parts))
        while size < _MAX_CHUNK_BYTES and (following := self._call.events.get_nowait()) is not None:
            if not isinstance(following, bytes):
                return following
            parts.append(following)
            size += len(following)
        return None

    def _may_hold(self) -> bool:
        """Return True if the caller is far enough ahead for a chunk to wait (module doc)."""
        if self._batch_ms <= 0 or self._first_chunk_at is None:
            return False
        played_ms = (time.monotonic() - self._first_chunk_at) * 1000
        return self._delivery.audio_ms - played_ms >= 2 * self._batch_ms

    async def _hold_for_more_audio(self, parts: list[bytes]) -> CallEvent | BaseException | None:
        """Append the audio arriving within ``batch_ms``; return the first other event (or error).

        Cancelling the queue's ``get`` loses no event, so the timeout is safe.
        """
        size = sum(map(len, parts))
        events = self._call.events
        try:
            async with asyncio.timeout(self._batch_ms / 1000):
                while size < _MAX_CHUNK_BYTES:
                    following = await events.get()
                    if not isinstance(following, bytes):
                        return following
                    parts.append(following)
                    size += len(following)
        except TimeoutError:
            pass
        return None

    def _audio(self, data: bytes) -> pb.SynthesizeResponse:
        delivery = self._delivery
        before = delivery.audio_ms
        delivery.audio_bytes += len(data)
        delivery.audio_ms = self._audio_ms(delivery.audio_bytes)
        # Filled in place: an AudioChunk built first would be copied, bytes and
        # all, into the response (2.9 against 1.2 us a frame, measured).
        response = pb.SynthesizeResponse()
        chunk = response.audio
        chunk.data = data
        chunk.sequence = delivery.audio_chunks
        chunk.duration_ms = delivery.audio_ms - before
        if delivery.audio_chunks == 0:
            self._first_chunk_at = time.monotonic()
        delivery.audio_chunks += 1
        return response

    def _audio_ms(self, total_bytes: int) -> float:
        """Duration of the first ``total_bytes`` of the call's audio (a WAV header counts 0)."""
        if self._params.format == "wav":
            total_bytes = max(total_bytes - _WAV_HEADER_BYTES, 0)
        return self._params.audio_ms(total_bytes)


def _sentence(sentence: Sentence) -> pb.SentenceTiming:
    timing = pb.SentenceTiming(
        index=sentence.index, text=sentence.text, words=[_word(w) for w in sentence.words]
    )
    if sentence.begin_ms is not None:
        timing.begin_ms = sentence.begin_ms
    if sentence.end_ms is not None:
        timing.end_ms = sentence.end_ms
    return timing


def _word(word: Word) -> pb.WordTiming:
    return pb.WordTiming(
        text=word.text,
        begin_index=word.begin_index,
        end_index=word.end_index,
        begin_ms=word.begin_time,
        end_ms=word.end_time,
        phonemes=[
            pb.PhonemeTiming(text=p.text, tone=p.tone, begin_ms=p.begin_time, end_ms=p.end_time)
            for p in word.phonemes
        ],
    )

"""One running task on one emulator connection: text in, events and audio out.

:class:`TaskRun` is created after ``task-started`` was sent and ends with
exactly one of ``task-finished``, ``task-failed``, or nothing when the
connection went away. It is the only writer on its connection while it runs,
so the order of §6 holds by construction: for each sentence
``sentence-begin``, then ``sentence-synthesis`` events each immediately
followed by one binary frame, then ``sentence-end``; nothing after the final
event.

The session (the connection's reader) calls :meth:`TaskRun.add_text`,
:meth:`flush`, :meth:`finish`, :meth:`cancel`, :meth:`fail`, :meth:`abandon`;
the task acts on them at the next frame boundary, never between an event and
its audio frame.

Cost matters: a benchmark runs hundreds of tasks at once next to the system
under test, so the per-frame path avoids allocating timers or tasks and
re-encoding what does not change. Pacing waits on one future per frame, with
a timer at the frame's absolute due time (so lateness never accumulates); the
``sentence-synthesis`` event is encoded once per sentence; the audio is one
cached buffer per sentence, sliced; frames are queued in a
:class:`~sidecar.emulator.wire.FrameSink` and written once per burst (flushed
before every wait); the audio's SHA-256 is computed only when read.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections import deque
from typing import Any, Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sidecar.emulator import audio
from sidecar.emulator.digest import AudioDigest
from sidecar.emulator.knobs import EmulatorKnobs
from sidecar.emulator.params import INVALID_PARAMETER, TaskParams
from sidecar.emulator.sentences import Sentence, SentenceSplitter, strip_ssml, word_timings
from sidecar.emulator.stats import Outcome, StatsBook, TaskRecord
from sidecar.emulator.wire import FrameSink
from sidecar.protocol import (
    ProtocolViolation,
    count_characters,
    result_generated_event,
    task_failed_event,
    task_finished_event,
)

__all__ = ["EMULATOR_DROP", "TaskPhase", "TaskRun"]

_log = logging.getLogger(__name__)

EMULATOR_DROP: Final = "EmulatorDrop"
_FINISH: Final = None  # queue marker: finish-task received, no more text
# Without pacing, write at least this often, so flow control (drain) applies.
_FLUSH_BYTES: Final = 1 << 16
# Timer granularity: a frame goes out at most this late, never early.
_TICK_S: Final = 0.001


class TaskPhase(enum.Enum):
    """Where a running task stands (§7), from the server's side."""

    RUNNING = "running"  # accepts continue-task
    FINISHING = "finishing"  # finish-task received, audio still going out
    CANCELLING = "cancelling"  # cancel directive received
    ENDED = "ended"


class _Stop(Exception):
    """Ends the task at a frame boundary with one outcome."""

    def __init__(self, outcome: Outcome, code: str | None = None, message: str = "") -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.code = code
        self.message = message


class TaskRun:
    """One task's synthesis; drive it with ``await run.run()`` in its own asyncio task."""

    def __init__(
        self,
        *,
        connection: ServerConnection,
        params: TaskParams,
        record: TaskRecord,
        knobs: EmulatorKnobs,
        book: StatsBook,
        ordinal: int,
    ) -> None:
        self._ws = connection
        self._sink = FrameSink(connection)
        self._params = params
        self.record = record
        self._knobs = knobs
        self._book = book
        self._ordinal = ordinal
        self.phase = TaskPhase.RUNNING
        self._splitter = SentenceSplitter()
        self._queue: deque[Sentence | None] = deque()
        self._waiter: asyncio.Future[None] | None = None  # resolved by _wake() or _timer
        self._timer: asyncio.TimerHandle | None = None
        self._stop: _Stop | None = None
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._text_messages = 0
        self._characters = 0  # counted characters received (§4.2)
        self._billed = 0  # running total reported in sentence-end
        self._index = 0  # sentences whose sentence-end was queued
        self._frames = 0
        self._audio_bytes = 0  # queued; the record counts them once written
        self._first_audio_at: float | None = None
        self._audio_ms = 0.0
        self._digest = AudioDigest()
        self._fault_done = False
        book.watch_sha256(record, self._sha256)

    @property
    def task_id(self) -> str:
        return self.record.task_id

    def __repr__(self) -> str:
        return (
            f"<TaskRun {self.task_id} {self.phase.value} sentences={self._index} "
            f"frames={self._frames} queued={len(self._queue)}>"
        )

    # -- commands from the session ------------------------------------------

    def add_text(self, text: str) -> None:
        """Take one continue-task text; raise ProtocolViolation if it breaks a rule (§4.2, §5)."""
        self._text_messages += 1
        if self._params.enable_ssml and self._text_messages > 1:
            raise ProtocolViolation(INVALID_PARAMETER, "Text request limit violated, expected 1.")
        if not text:
            raise ProtocolViolation(INVALID_PARAMETER, "Parameter invalid: text is null")
        spoken = strip_ssml(text) if self._params.enable_ssml else text
        count = count_characters(spoken)
        if count > self._knobs.max_chars_per_message:
            raise ProtocolViolation(
                INVALID_PARAMETER,
                f"Text too long: {count} characters in one message, "
                f"the limit is {self._knobs.max_chars_per_message}.",
            )
        if self._characters + count > self._knobs.max_chars_per_task:
            raise ProtocolViolation(
                INVALID_PARAMETER,
                f"Text too long: {self._characters + count} characters in this task, "
                f"the limit is {self._knobs.max_chars_per_task}.",
            )
        self._characters += count
        self._enqueue(self._splitter.feed(spoken))

    def flush(self) -> None:
        """Synthesise the buffered incomplete text now; the task stays open (§4.3)."""
        self._enqueue(self._splitter.flush())

    def finish(self) -> None:
        """finish-task: synthesise the tail, then send task-finished (§4.4)."""
        self.phase = TaskPhase.FINISHING
        self._queue.extend(self._splitter.flush())
        self._queue.append(_FINISH)
        self._wake()

    def cancel(self) -> None:
        """The cancel directive: stop at once, then task-finished (§4.4)."""
        self.phase = TaskPhase.CANCELLING
        self._interrupt(_Stop("cancelled"))

    def fail(self, code: str, message: str) -> None:
        """End the task with task-failed at the next frame boundary."""
        self._interrupt(_Stop("failed", code, message))

    def abandon(self) -> None:
        """The connection is gone: stop without sending anything."""
        self._stop = _Stop("abandoned")
        self._wake()

    def wake(self) -> None:
        """Re-read the knobs now (a knob changed)."""
        self._wake()

    def started(self) -> None:
        """task-started went out: the input timeout counts from now (§7)."""
        self._last_activity = self._loop.time()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            assert self._timer is not None
            self._timer.cancel()

    def _interrupt(self, stop: _Stop) -> None:
        if self._stop is None:
            self._stop = stop
        self._wake()

    def _enqueue(self, sentences: list[Sentence]) -> None:
        self._last_activity = self._loop.time()
        if sentences:  # else a waiting task finds the later input deadline when it wakes
            self._queue.extend(sentences)
            self._wake()

    # -- the task's body ----------------------------------------------------

    async def run(self) -> Outcome:
        """Synthesise until the task ends; return its outcome (never raises on I/O)."""
        try:
            try:
                while (sentence := await self._next()) is not None:
                    await self._synthesize(sentence)
                await self._inject_fault()
                self._sink.text(task_finished_event(self.task_id, self._characters).encode())
                await self._flush()
                self._end("finished")
            except _Stop as stop:
                await self._stopped(stop)
        except ConnectionClosed:
            self._end("abandoned")
        finally:
            self._book.unwatch_sha256(self.record)
            self.record.audio_sha256 = self._sha256()
        return self.record.outcome

    async def _stopped(self, stop: _Stop) -> None:
        if stop.outcome == "cancelled":
            self._sink.text(task_finished_event(self.task_id, self._characters).encode())
            await self._flush()
        elif stop.outcome == "failed":
            assert stop.code is not None
            self._sink.text(task_failed_event(self.task_id, stop.code, stop.message).encode())
            await self._flush()
            self.record.error_code = stop.code
            self.record.error_message = stop.message
        elif stop.code is not None:  # abandoned because the emulator dropped the socket
            self.record.error_code = stop.code
            self.record.error_message = stop.message
        self._end(stop.outcome)

    def _end(self, outcome: Outcome) -> None:
        self.phase = TaskPhase.ENDED
        self.record.outcome = outcome
        self.record.characters = self._characters

    def _check(self) -> None:
        if self._stop is not None:
            raise self._stop

    async def _next(self) -> Sentence | None:
        """Return the next sentence, None after finish-task; enforce the input timeout (§7)."""
        while True:
            self._check()
            if self._queue:
                return self._queue.popleft()
            if self._sink.pending:
                await self._flush()  # the last sentence-end goes out before waiting for text
                continue
            timeout = self._knobs.input_timeout_s
            deadline = self._last_activity + timeout
            if deadline <= self._loop.time():
                raise _Stop("failed", "CLIENT_ERROR", f"request timeout after {timeout:g} seconds.")
            await self._arm(deadline)

    async def _sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (loop time); raise _Stop as soon as a command stops the task."""
        while True:
            self._check()
            if self._loop.time() >= deadline:
                return
            if self._sink.pending:
                await self._flush()  # what is due now goes out before the wait
                continue
            await self._arm(deadline)

    def _arm(self, deadline: float) -> asyncio.Future[None]:
        """Return a future resolved at ``deadline`` or by the next :meth:`_wake`.

        One future and one timer per wait: asyncio.wait_for on an Event cost a
        task and several callbacks for every audio frame. The timer is rounded
        up to the next :data:`_TICK_S`, so the frames of many tasks due within
        one tick go out in one turn of the event loop rather than one turn
        (and one epoll_wait) each.
        """
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._timer = self._loop.call_at(math.ceil(deadline / _TICK_S) * _TICK_S, _release, waiter)
        return waiter

    async def _flush(self) -> None:
        """Write the queued frames, then count what they carried in the record."""
        await self._sink.flush()
        record = self.record
        if record.audio_bytes != self._audio_bytes or record.sentences != self._index:
            record.audio_bytes = self._audio_bytes
            record.sentences = self._index
            self._book.changed()

    def _event(self, kind: str, **fields: Any) -> bytes:
        return result_generated_event(self.task_id, kind, self._index, **fields).encode()

    async def _synthesize(self, sentence: Sentence) -> None:
        spec = self._params.audio
        knobs = self._knobs
        key = (sentence.text, self._index, spec, knobs.ms_per_character)
        data = audio.sentence_audio(*key)
        if self._first_audio_at is None:
            await self._sleep_until(self._loop.time() + knobs.first_packet_delay_s)
            self._first_audio_at = self._loop.time()
            if spec.format == "wav":
                self._digest.append(("wav", spec.sample_rate), audio.wav_header(spec.sample_rate))
        self._check()
        self._digest.append(key, data)
        sink = self._sink
        sink.text(self._event("sentence-begin", original_text=sentence.text))
        synthesis = self._event("sentence-synthesis")  # the same for every frame (§6)
        size = audio.chunk_size(spec.format, spec.sample_rate, knobs.chunk_ms)
        width = audio.sample_width(spec.format)
        view = memoryview(data)
        first_audio_at = self._first_audio_at
        for start in range(0, len(data), size):
            # Pacing: hold each frame until real time catches up with the audio
            # sent before it (x factor), on an absolute schedule.
            factor = knobs.realtime_factor
            if factor > 0:
                await self._sleep_until(first_audio_at + self._audio_ms * factor / 1000)
            else:
                self._check()
            chunk: bytes | memoryview = view[start : start + size]
            if self._frames == 0 and spec.format == "wav":
                chunk = audio.wav_header(spec.sample_rate) + chunk
            sink.text(synthesis)
            sink.binary(chunk)
            self._frames += 1
            self._audio_bytes += len(chunk)
            self._audio_ms += min(size, len(data) - start) // width * 1000 / spec.sample_rate
            self._last_activity = self._loop.time()
            if not self._fault_done:
                await self._inject_fault()
            elif sink.pending_bytes >= _FLUSH_BYTES:
                await self._flush()
        self._billed += sentence.characters
        duration_ms = len(data) // width * 1000 // spec.sample_rate
        words = word_timings(sentence.text, duration_ms) if self._params.word_timestamps else ()
        sink.text(
            self._event(
                "sentence-end",
                original_text=sentence.text,
                words=words,
                characters=self._billed,
            )
        )
        self._index += 1

    def _sha256(self) -> str:
        return self._digest.hexdigest(self.record.audio_bytes)

    async def _inject_fault(self) -> None:
        """Mid-task faults (knobs): after the first audio frame, or before task-finished."""
        if self._fault_done:
            return
        self._fault_done = True
        knobs = self._knobs
        if _every(knobs.drop_mid_every, self._ordinal):
            await self._flush()  # what was sent before the drop, the client may have
            _log.info("dropping connection mid-task %s (drop_mid_every)", self.task_id)
            self._ws.transport.abort()
            self._book.dropped()
            raise _Stop("abandoned", EMULATOR_DROP, "connection dropped by drop_mid_every")
        if _every(knobs.fail_mid_every, self._ordinal):
            raise _Stop("failed", knobs.fail_code, knobs.fail_message)


def _every(n: int, ordinal: int) -> bool:
    return n > 0 and ordinal % n == 0


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

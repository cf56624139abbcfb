"""One running task on one emulator connection: text in, events and audio out.

:class:`TaskRun` is created after ``task-started`` was sent and ends with
exactly one of ``task-finished``, ``task-failed``, or nothing when the
connection went away. It is the only writer on its connection while it runs,
so the order of §6 holds by construction: for each sentence
``sentence-begin``, then ``sentence-synthesis`` events each immediately
followed by one binary frame, then ``sentence-end``; nothing after the final
event.

The session (the connection's reader) calls :meth:`TaskRun.add_text`,
:meth:`flush`, :meth:`finish`, :meth:`cancel`, :meth:`interrupt`,
:meth:`fail`, :meth:`abandon`; the task acts on them at the next frame
boundary, never between an event and its audio frame.

Where usage, word timings and ``request_uuid`` go follows the knobs
(``usage_in``, ``words_in``, ``finished_sentences``, ``sentence_times``,
``request_uuid``): the official pages disagree on it (§6), and the emulator
can speak each variant.

Benchmarks run hundreds of tasks next to the system under test, so CPU per
frame matters: after a task's first frame, its paced frames are sent from a
:class:`~sidecar.emulator.pacer.Pacer` callback (:meth:`TaskRun._tick`)
without waking the coroutine, which takes over at the end of a sentence, on a
command, or under flow control. Frames queue in
:class:`~sidecar.emulator.output.TaskOutput`, flushed before every wait.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import deque
from typing import Any, Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sidecar.emulator import audio
from sidecar.emulator.codes import message_for
from sidecar.emulator.knobs import EmulatorKnobs
from sidecar.emulator.output import TaskOutput
from sidecar.emulator.pacer import Pacer
from sidecar.emulator.params import INVALID_PARAMETER, TaskParams
from sidecar.emulator.sentences import Sentence, SentenceSplitter, strip_ssml, word_timings
from sidecar.emulator.stats import Outcome, StatsBook, TaskRecord
from sidecar.protocol import (
    ProtocolViolation,
    SentenceTimes,
    Word,
    count_characters,
    result_generated_event,
    server_event,
    task_failed_event,
    task_finished_event,
)

__all__ = ["EMULATOR_DROP", "TaskPhase", "TaskRun"]

_log = logging.getLogger(__name__)

EMULATOR_DROP: Final = "EmulatorDrop"
_FINISH: Final = None  # queue marker: finish-task received, no more text
# Without pacing, write at least this often, so flow control (drain) applies.
_FLUSH_BYTES: Final = 1 << 16


class TaskPhase(enum.Enum):
    """Where a running task stands (§7), from the server's side."""

    RUNNING = "running"  # accepts continue-task
    FINISHING = "finishing"  # finish-task received, audio still going out
    CANCELLING = "cancelling"  # cancel directive (or a new run-task) received
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
        pacer: Pacer,
    ) -> None:
        self._ws = connection
        self._out = TaskOutput(connection, params.audio, record, book)
        self._pacer = pacer
        self._params = params
        self.record = record
        self._knobs = knobs
        self._book = book
        self._ordinal = ordinal
        self.phase = TaskPhase.RUNNING
        self._splitter = SentenceSplitter()
        self._queue: deque[Sentence | None] = deque()
        self._waiter: asyncio.Future[None] | None = None  # resolved by wake() or _timer
        self._timer: asyncio.TimerHandle | None = None
        self._generation = 0  # of _tick callbacks: one that does not match is stale
        self._stop: _Stop | None = None
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._text_messages = 0
        self._characters = 0  # counted characters received (§4.2)
        self._billed = 0  # running total reported in sentence-end
        self._fault_done = False
        self._unknown_sent = False
        self._finish_interrupted = False  # a new run-task asked for task-finished first
        self._audio_ms = 0  # audio of the ended sentences: the next sentence's begin_time
        self._timed: list[SentenceTimes] = []  # sentences with word timings, for task-finished
        book.watch_sha256(record, self._out.sha256)

    @property
    def task_id(self) -> str:
        return self.record.task_id

    def __repr__(self) -> str:
        return (
            f"<TaskRun {self.task_id} {self.phase.value} sentences={self._out.sentences} "
            f"audio={self.record.audio_bytes}B queued={len(self._queue)}>"
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
        self.wake()

    def cancel(self) -> None:
        """The cancel directive: stop at once, then task-finished (§4.4)."""
        self.phase = TaskPhase.CANCELLING
        self._interrupt(_Stop("cancelled"))

    def interrupt(self, *, send_finished: bool) -> None:
        """A new run-task on the connection: stop at once (§7).

        With ``send_finished`` the task ends with task-finished, otherwise
        with nothing more on the wire.
        """
        self.phase = TaskPhase.CANCELLING
        self._finish_interrupted = send_finished
        self._interrupt(_Stop("interrupted"))

    def fail(self, code: str, message: str) -> None:
        """End the task with task-failed at the next frame boundary."""
        self._interrupt(_Stop("failed", code, message))

    def abandon(self) -> None:
        """The connection is gone: stop without sending anything."""
        self._stop = _Stop("abandoned")
        self.wake()

    def started(self) -> None:
        """task-started went out: the input timeout counts from now (§7)."""
        self._last_activity = self._loop.time()

    def wake(self) -> None:
        """Re-read the knobs now (a knob changed); commands call it too."""
        self._generation += 1  # a _tick already scheduled does nothing
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            if self._timer is not None:
                self._timer.cancel()

    def _interrupt(self, stop: _Stop) -> None:
        if self._stop is None:
            self._stop = stop
        self.wake()

    def _enqueue(self, sentences: list[Sentence]) -> None:
        self._last_activity = self._loop.time()
        if sentences:  # else a waiting task finds the later input deadline when it wakes
            self._queue.extend(sentences)
            self.wake()

    # -- the task's body ----------------------------------------------------

    async def run(self) -> Outcome:
        """Synthesise until the task ends; return its outcome (never raises on I/O)."""
        try:
            try:
                while (sentence := await self._next()) is not None:
                    await self._synthesize(sentence)
                await self._inject_fault()
                self._send_unknown()
                await self._send_final(self._finished_event())
                self._end("finished")
            except _Stop as stop:
                await self._stopped(stop)
        except ConnectionClosed:
            self._end("abandoned")
        finally:
            self._book.unwatch_sha256(self.record)
            self.record.audio_sha256 = self._out.sha256()
        return self.record.outcome

    async def _stopped(self, stop: _Stop) -> None:
        if stop.outcome == "cancelled" or (
            stop.outcome == "interrupted" and self._finish_interrupted
        ):
            await self._send_final(self._finished_event())
        elif stop.outcome == "failed":
            assert stop.code is not None
            await self._send_final(task_failed_event(self.task_id, stop.code, stop.message))
            self.record.error_code = stop.code
            self.record.error_message = stop.message
        elif stop.code is not None:  # abandoned because the emulator dropped the socket
            self.record.error_code = stop.code
            self.record.error_message = stop.message
        self._end(stop.outcome)

    def _finished_event(self) -> str:
        """task-finished with what the knobs put there (§6)."""
        knobs = self._knobs
        sentences: list[SentenceTimes] = []
        if knobs.words_in != "sentence-end":
            sentences = self._timed if knobs.finished_sentences == "all" else self._timed[-1:]
        request_uuid = str(uuid.uuid4()) if knobs.request_uuid else ""
        self.record.request_uuid = request_uuid
        return task_finished_event(
            self.task_id,
            None if knobs.usage_in == "sentence-end" else self._characters,
            sentences=sentences,
            sentences_as_list=knobs.finished_sentences == "all",
            request_uuid=request_uuid,
        )

    def _send_unknown(self) -> None:
        """Queue the unknown event of every Nth task (unknown_event_every), once."""
        if self._unknown_sent or not _every(self._knobs.unknown_event_every, self._ordinal):
            return
        self._unknown_sent = True
        payload = {"output": {"sentences_done": self._out.sentences}}
        frame = server_event(self.task_id, self._knobs.unknown_event_name, payload)
        self._out.sink.text(frame.encode())

    async def _send_final(self, event: str) -> None:
        self._out.sink.text(event.encode())  # after whatever is still queued
        await self._out.flush()

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
            if self._out.sink.pending:
                await self._out.flush()  # the last sentence-end goes out before waiting for text
                continue
            timeout = self._knobs.input_timeout_s
            deadline = self._last_activity + timeout
            if deadline <= self._loop.time():
                code = self._knobs.input_timeout_code
                raise _Stop("failed", code, f"request timeout after {timeout:g} seconds.")
            await self._arm(deadline)

    async def _sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (loop time); raise _Stop as soon as a command stops the task."""
        while True:
            self._check()
            if self._loop.time() >= deadline:
                return
            if self._out.sink.pending:
                await self._out.flush()  # what is due now goes out before the wait
                continue
            await self._arm(deadline)

    def _arm(self, deadline: float) -> asyncio.Future[None]:
        """Return a future resolved at ``deadline`` or by the next :meth:`wake`.

        One future and one timer: asyncio.wait_for on an Event costs a task
        and several callbacks per wait.
        """
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._timer = self._loop.call_at(deadline, _release, waiter)
        return waiter

    def _event(self, kind: str, **fields: Any) -> bytes:
        index = self._out.sentences
        return result_generated_event(self.task_id, kind, index, **fields).encode()

    async def _synthesize(self, sentence: Sentence) -> None:
        spec = self._params.audio
        knobs = self._knobs
        out = self._out
        key = (sentence.text, out.sentences, spec, knobs.ms_per_character)
        data = audio.sentence_audio(*key)
        samples = audio.sentence_samples(sentence.text, spec, knobs.ms_per_character)
        duration_ms = samples * 1000 / spec.sample_rate
        if out.first_audio_at is None:
            await self._sleep_until(self._loop.time() + knobs.first_packet_delay_s)
            out.first_audio_at = self._loop.time()
        self._check()
        self._send_unknown()
        out.start_sentence(
            key,
            data,
            duration_ms,
            begin=self._event("sentence-begin", original_text=sentence.text),
            synthesis=self._event("sentence-synthesis"),
            chunk_ms=knobs.chunk_ms,
        )
        await self._play()
        self._billed += sentence.characters
        out.end_sentence(self._sentence_end(sentence, samples * 1000 // spec.sample_rate))

    def _sentence_end(self, sentence: Sentence, whole_ms: int) -> bytes:
        """sentence-end with what the knobs put there; keep its timings for task-finished."""
        knobs = self._knobs
        params = self._params
        begin_time: int | None = None
        end_time: int | None = None
        if knobs.sentence_times:
            begin_time, end_time = self._audio_ms, self._audio_ms + whole_ms
        self._audio_ms += whole_ms
        words: tuple[Word, ...] = ()
        if params.word_timestamps:
            words = word_timings(sentence.text, whole_ms, phonemes=params.phoneme_timestamps)
            timed = SentenceTimes(self._out.sentences, words, begin_time, end_time)
            # Keep every sentence only for a task-finished that lists them all
            # (bounded by the task's character limit), else only the last.
            if knobs.finished_sentences == "all":
                self._timed.append(timed)
            else:
                self._timed[:] = [timed]
        return self._event(
            "sentence-end",
            original_text=sentence.text,
            words=() if knobs.words_in == "task-finished" else words,
            characters=None if knobs.usage_in == "task-finished" else self._billed,
            begin_time=begin_time,
            end_time=end_time,
        )

    async def _play(self) -> None:
        """Queue the sentence's frames, each at its due time; the last one stays queued."""
        out = self._out
        while out.frames_left:
            self._check()
            factor = self._knobs.realtime_factor
            if factor > 0 and self._fault_done:
                # The steady state: the pacer sends the frames until the
                # sentence is done or something needs this coroutine.
                waiter = self._loop.create_future()
                self._waiter = waiter
                self._timer = None
                self._generation += 1
                self._tick(self._generation)
                try:
                    await waiter
                finally:
                    self._generation += 1  # whatever happened, no tick runs on its own
                if out.frames_left and self._stop is None:
                    await out.flush()  # flow control, or a connection going away
                continue
            if factor > 0:  # hold the frame until real time catches up (x factor)
                await self._sleep_until(out.due(factor))
            out.queue_frame()
            self._last_activity = self._loop.time()
            if not self._fault_done:
                await self._inject_fault()
            elif out.sink.pending_bytes >= _FLUSH_BYTES:
                await out.flush()

    def _tick(self, generation: int) -> None:
        """Pacer callback: send the frames now due, then come back for the next one.

        Returns control to :meth:`_play` (resolves its waiter) when the
        sentence has no frame left, the task must stop, pacing was turned
        off, or the connection cannot take the frames without waiting.
        """
        if generation != self._generation:
            return  # the coroutine took over since this call was scheduled
        waiter = self._waiter
        assert waiter is not None
        try:
            factor = self._knobs.realtime_factor
            if self._stop is None and factor > 0:
                now = self._last_activity = self._loop.time()
                due = self._out.queue_due(factor, now, _FLUSH_BYTES)
                if due is not None and self._out.write_now():
                    self._pacer.call_at(due, self._tick, generation)
                    return
        except Exception as exc:  # noqa: BLE001 - handed to _play, which raises it
            if not waiter.done():
                waiter.set_exception(exc)
            return
        _release(waiter)

    async def _inject_fault(self) -> None:
        """Mid-task faults (knobs): after the first audio frame, or before task-finished."""
        if self._fault_done:
            return
        self._fault_done = True
        knobs = self._knobs
        if _every(knobs.drop_mid_every, self._ordinal):
            await self._out.flush()  # what was sent before the drop, the client may have
            _log.info("dropping connection mid-task %s (drop_mid_every)", self.task_id)
            self._ws.transport.abort()
            self._book.dropped()
            raise _Stop("abandoned", EMULATOR_DROP, "connection dropped by drop_mid_every")
        if _every(knobs.fail_mid_every, self._ordinal):
            raise _Stop(
                "failed", knobs.fail_code, knobs.fail_message or message_for(knobs.fail_code)
            )


def _every(n: int, ordinal: int) -> bool:
    return n > 0 and ordinal % n == 0


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

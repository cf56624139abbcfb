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
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
from collections import deque
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sidecar.emulator import audio
from sidecar.emulator.knobs import EmulatorKnobs
from sidecar.emulator.params import INVALID_PARAMETER, TaskParams
from sidecar.emulator.sentences import Sentence, SentenceSplitter, strip_ssml, word_timings
from sidecar.emulator.stats import Outcome, StatsBook, TaskRecord
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
        self._params = params
        self.record = record
        self._knobs = knobs
        self._book = book
        self._ordinal = ordinal
        self.phase = TaskPhase.RUNNING
        self._splitter = SentenceSplitter()
        self._queue: deque[Sentence | None] = deque()
        self._wake = asyncio.Event()
        self._stop: _Stop | None = None
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._text_messages = 0
        self._characters = 0  # counted characters received (§4.2)
        self._billed = 0  # running total reported in sentence-end
        self._index = 0
        self._frames = 0
        self._first_audio_at: float | None = None
        self._audio_ms = 0.0
        self._sha = hashlib.sha256()
        self._fault_done = False

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
        self._wake.set()

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
        self._wake.set()

    def wake(self) -> None:
        """Re-read the knobs now (a knob changed)."""
        self._wake.set()

    def started(self) -> None:
        """task-started went out: the input timeout counts from now (§7)."""
        self._last_activity = self._loop.time()

    def _interrupt(self, stop: _Stop) -> None:
        if self._stop is None:
            self._stop = stop
        self._wake.set()

    def _enqueue(self, sentences: list[Sentence]) -> None:
        self._queue.extend(sentences)
        self._last_activity = self._loop.time()
        self._wake.set()

    # -- the task's body ----------------------------------------------------

    async def run(self) -> Outcome:
        """Synthesise until the task ends; return its outcome (never raises on I/O)."""
        try:
            try:
                while (sentence := await self._next()) is not None:
                    await self._synthesize(sentence)
                await self._inject_fault()
                await self._ws.send(task_finished_event(self.task_id, self._characters))
                self._end("finished")
            except _Stop as stop:
                await self._stopped(stop)
        except ConnectionClosed:
            self._end("abandoned")
        return self.record.outcome

    async def _stopped(self, stop: _Stop) -> None:
        if stop.outcome == "cancelled":
            await self._ws.send(task_finished_event(self.task_id, self._characters))
        elif stop.outcome == "failed":
            assert stop.code is not None
            await self._ws.send(task_failed_event(self.task_id, stop.code, stop.message))
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
            timeout = self._knobs.input_timeout_s
            remaining = self._last_activity + timeout - self._loop.time()
            if remaining <= 0:
                raise _Stop("failed", "CLIENT_ERROR", f"request timeout after {timeout:g} seconds.")
            await self._sleep(remaining)

    async def _sleep(self, delay: float) -> None:
        """Sleep up to ``delay``; wake early on a command or knob change."""
        self._wake.clear()
        if delay <= 0 or self._stop is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - self._loop.time()) > 0:
            self._check()
            await self._sleep(remaining)
        self._check()

    async def _synthesize(self, sentence: Sentence) -> None:
        spec = self._params.audio
        ms_per_character = self._knobs.ms_per_character
        pcm = audio.sentence_pcm(sentence.text, self._index, spec, ms_per_character)
        if self._first_audio_at is None:
            await self._sleep_until(self._loop.time() + self._knobs.first_packet_delay_s)
            self._first_audio_at = self._loop.time()
        self._check()
        await self._ws.send(
            result_generated_event(
                self.task_id, "sentence-begin", self._index, original_text=sentence.text
            )
        )
        for chunk in audio.pcm_chunks(pcm, spec.sample_rate, self._knobs.chunk_ms):
            await self._pace()
            data = audio.encode(spec.format, chunk)
            if self._frames == 0 and spec.format == "wav":
                data = audio.wav_header(spec.sample_rate) + data
            await self._ws.send(
                result_generated_event(self.task_id, "sentence-synthesis", self._index)
            )
            await self._ws.send(data)
            self._sent(data, len(chunk) // 2)
            await self._inject_fault()
        self._billed += sentence.characters
        duration_ms = len(pcm) // 2 * 1000 // spec.sample_rate
        words = word_timings(sentence.text, duration_ms) if self._params.word_timestamps else ()
        await self._ws.send(
            result_generated_event(
                self.task_id,
                "sentence-end",
                self._index,
                original_text=sentence.text,
                words=words,
                characters=self._billed,
            )
        )
        self._index += 1
        self.record.sentences = self._index
        self._book.changed()

    async def _pace(self) -> None:
        """Hold the next frame until real time catches up with the audio sent (x factor)."""
        assert self._first_audio_at is not None
        factor = self._knobs.realtime_factor
        if factor > 0:
            await self._sleep_until(self._first_audio_at + self._audio_ms * factor / 1000)
        else:
            self._check()

    def _sent(self, data: bytes, samples: int) -> None:
        self._frames += 1
        self._audio_ms += samples * 1000 / self._params.audio.sample_rate
        self._last_activity = self._loop.time()
        self._sha.update(data)
        self.record.audio_bytes += len(data)
        self.record.audio_sha256 = self._sha.hexdigest()
        self._book.changed()

    async def _inject_fault(self) -> None:
        """Mid-task faults (knobs): after the first audio frame, or before task-finished."""
        if self._fault_done:
            return
        self._fault_done = True
        knobs = self._knobs
        if _every(knobs.drop_mid_every, self._ordinal):
            _log.info("dropping connection mid-task %s (drop_mid_every)", self.task_id)
            self._ws.transport.abort()
            self._book.dropped()
            raise _Stop("abandoned", EMULATOR_DROP, "connection dropped by drop_mid_every")
        if _every(knobs.fail_mid_every, self._ordinal):
            raise _Stop("failed", knobs.fail_code, knobs.fail_message)


def _every(n: int, ordinal: int) -> bool:
    return n > 0 and ordinal % n == 0

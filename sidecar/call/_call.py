"""One call: a caller's commands in, one DashScope task on a leased connection, events out.

:meth:`Call.running` leases a connection from the pool and starts the task
on it (the pool retries once, skipping idle sockets, if a pooled one was
dead), then runs two pumps until the task ends:

* the *feeder* reads the caller's commands (text, flush, finish) and sends
  them upstream through a :class:`~sidecar.call._text.TextFeed`;
* the *reader* turns upstream events into :mod:`call events
  <sidecar.call._events>` in one bounded queue, which the writer (the gRPC
  edge) drains.

Ending the input, by a ``finish`` command or by the end of the commands (a
half-close), sends finish-task at once. A caller that hangs up instead ends
the call by cancellation; whatever way the call ends early, the pool closes
its socket on the way out, the documented way to stop a DashScope task, so a
hang-up never leaves DashScope synthesizing (and billing) the rest.

While the caller leaves its audio unread, the reader waits on the full queue
and the upstream deadlines are paused (see :mod:`sidecar.call._deadlines`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sidecar import protocol
from sidecar.call._deadlines import UpstreamDeadlines
from sidecar.call._events import (
    FINISHED,
    FLUSHED,
    CallEvent,
    CallEvents,
    Command,
    Finish,
    Flush,
    Sentence,
    Text,
)
from sidecar.call._params import TaskParams
from sidecar.call._text import TextFeed
from sidecar.config import Config
from sidecar.errors import (
    CallerIdle,
    InvalidRequest,
    SidecarError,
    UpstreamTaskFailed,
    UpstreamUnavailable,
)
from sidecar.pool import Lease, Pool
from sidecar.telemetry import Synthesis, TaskReport, Telemetry
from sidecar.upstream import UpstreamTask

__all__ = ["Call", "Delivery", "Started"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Started:
    """The task is running upstream."""

    task_id: str
    warm: bool  # a warm pooled connection served it
    pool_wait_ms: float


@dataclass(slots=True)
class Delivery:
    """What the writer delivered to the caller; the writer alone updates it."""

    audio_bytes: int = 0
    audio_chunks: int = 0
    audio_ms: float = 0.0


class Call:
    """One synthesis for one caller; see the module docstring."""

    def __init__(
        self,
        pool: Pool,
        config: Config,
        params: TaskParams,
        *,
        request_id: str,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.params = params
        self.request_id = request_id
        self.events = CallEvents()
        self.delivery = Delivery()
        self.first_audio_ms = 0.0
        self.pool_wait_ms = 0.0
        self._pool = pool
        self._config = config
        self._telemetry = telemetry or Telemetry.disabled()
        self._arrived = time.monotonic()
        self._text = TextFeed(ssml=params.ssml)
        self._task: UpstreamTask | None = None
        self._synthesis: Synthesis | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reader_timed_out = False
        self._frames = 0
        self._sentences = 0
        self._sentence_text: dict[int, str] = {}
        self._deadlines = UpstreamDeadlines(
            asyncio.get_running_loop(),
            first_audio_s=config.first_audio_timeout_s,
            stall_s=config.stall_timeout_s,
            finish_s=config.finish_timeout_s,
            on_overdue=self._on_overdue,
        )

    def __repr__(self) -> str:
        task = self._task.task_id if self._task else "-"
        return f"<Call {self.request_id} task={task} frames={self._frames} {self.events!r}>"

    @property
    def task_id(self) -> str:
        """The DashScope task id, once the task has started (else empty)."""
        return self._task.task_id if self._task else ""

    @property
    def billed_characters(self) -> int:
        """What DashScope bills for the task so far (its last ``usage.characters``)."""
        return (self._task.protocol.billed_characters or 0) if self._task else 0

    @property
    def request_uuid(self) -> str:
        """DashScope's request id for support tickets (from task-finished), else empty."""
        return self._task.protocol.request_uuid if self._task else ""

    # --------------------------------------------------------------- life cycle

    @contextlib.asynccontextmanager
    async def running(
        self, commands: AsyncIterator[Command], *, acquire_timeout: float | None
    ) -> AsyncIterator[Started]:
        """Lease a connection, start the task and the pumps; stop everything on exit.

        Raises what the pool and the task's start raise (:mod:`sidecar.errors`).
        """
        error: BaseException | None = None
        async with self._pool.lease(acquire_timeout, self._begin) as lease:
            assert lease.task is not None
            self._task = lease.task
            self.pool_wait_ms = lease.wait_ms
            lease.on_reclaim = self._reclaimed
            log.info("task %s on %r", self._task.task_id, lease.connection)
            try:
                assert self._synthesis is not None
                with self._synthesis.activate():  # the pumps (and their logs) inherit the span
                    self._feeder = asyncio.create_task(
                        self._feed(commands, lease), name=f"feed-{self.request_id}"
                    )
                    self._reader = asyncio.create_task(
                        self._read(lease), name=f"read-{self.request_id}"
                    )
                yield Started(self._task.task_id, lease.warm, lease.wait_ms)
            except BaseException as exc:
                error = exc
                raise
            finally:
                await self._stop_pumps()
                self._report(error)

    def abort(self, error: SidecarError) -> None:
        """End the call with ``error`` (shutdown past the drain grace, a reclaimed lease).

        Never blocks: the pumps stop, pending events are dropped, and the
        writer raises ``error``; leaving :meth:`running` stops the task.
        """
        for pump in (self._feeder, self._reader):
            if pump is not None:
                pump.cancel()
        self.events.fail(error)

    async def _begin(self, lease: Lease) -> UpstreamTask:
        """Start the task on a leased connection, inside its own synthesis span."""
        synthesis = self._telemetry.synthesis(
            request_id=self.request_id,
            model=self.params.model,
            voice=self.params.voice,
            audio_format=self.params.format,
            sample_rate=self.params.sample_rate,
        )
        try:
            with synthesis.activate():
                task = await lease.connection.start_task(
                    self.params.model,
                    self.params.parameters,
                    start_timeout=self._config.start_timeout_s,
                )
        except BaseException as exc:
            # A task refused at start (a bad voice, throttling) has an id too.
            task_id = exc.task_id if isinstance(exc, UpstreamTaskFailed) else ""
            synthesis.started(task_id=task_id, connection_id=lease.connection.id)
            synthesis.end(TaskReport(outcome_error=exc))
            raise
        synthesis.started(task_id=task.task_id, connection_id=lease.connection.id)
        self._synthesis = synthesis
        return task

    def _reclaimed(self) -> None:
        """The pool took the connection back from a call that showed no activity."""
        log.warning("connection reclaimed after no activity")
        self.abort(
            UpstreamUnavailable(
                f"the call showed no activity for {self._pool.policy.lease_stall_s:g}s; "
                "its upstream connection was reclaimed"
            )
        )

    async def _stop_pumps(self) -> None:
        self._deadlines.cancel()
        pumps = [p for p in (self._feeder, self._reader) if p is not None]
        for pump in pumps:
            pump.cancel()
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)

    def _report(self, error: BaseException | None) -> None:
        """End the synthesis span: how the task ended and what it delivered."""
        task = self._task
        if self._synthesis is None or task is None:
            return
        self._synthesis.end(
            TaskReport(
                finished=task.state is protocol.TaskState.FINISHED,
                cancelled=not task.state.is_over,  # the pool closes its socket on the way out
                outcome_error=error,
                billed_characters=task.protocol.billed_characters,
                text_characters=task.protocol.characters_sent,
                first_audio_ms=self.first_audio_ms or None,
                audio_bytes=self.delivery.audio_bytes,
                audio_chunks=self.delivery.audio_chunks,
                sentences=self._sentences,
                request_uuid=self.request_uuid,
            )
        )

    # ------------------------------------------------------------------ feeder

    async def _feed(self, commands: AsyncIterator[Command], lease: Lease) -> None:
        assert self._task is not None
        task = self._task
        idle_s = self._config.caller_idle_timeout_s
        pending = aiter(commands)
        finished = False
        try:
            while True:
                try:
                    if finished:  # only the end of the input may follow
                        command = await anext(pending)
                    else:
                        async with asyncio.timeout(idle_s):
                            command = await anext(pending)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise CallerIdle(
                        f"no text and no finish for {idle_s:g}s; DashScope ends a task after "
                        f"{protocol.INPUT_TIMEOUT_S:g}s without text, so send finish (or "
                        "half-close) once the text is complete"
                    ) from exc
                lease.touch()
                if finished:
                    raise InvalidRequest(
                        _kind(command),
                        f"{_kind(command)} sent after finish: the stream's text had ended",
                    )
                if isinstance(command, Text):
                    for piece in self._text.take(command.text):
                        await task.send_text(piece)
                elif isinstance(command, Flush):
                    if self._text.sent_any:
                        await task.flush()
                        self._deadlines.synthesis_requested()
                    await self._put(FLUSHED)
                else:
                    finished = True
                    await self._finish(task)
            if not finished:
                # The caller half-closed (finish), or hung up: gRPC ends the request
                # stream the same way and cancels the call a moment later, 30 us
                # (p50) to 0.13 ms (p99) after in a measurement on loopback. Yielding
                # to the loop three times first lets that cancel (which stops this
                # feeder) win in about 97% of hang-ups, so most never send
                # finish-task; the rest are stopped by the socket's close within
                # milliseconds. A half-close pays the three loop turns, microseconds.
                for _ in range(3):
                    await asyncio.sleep(0)
                await self._finish(task)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the call fails with it, through the writer
            if task.state is protocol.TaskState.FAILED:
                # DashScope failed the task while the caller's text was still
                # coming: the reader has queued its task-failed, the call's
                # error. This send's error (the task is over) would replace it
                # and answer INTERNAL (a soak hit it in 3 calls of 10,000).
                return
            # The caller broke the stream's rules (or went silent): the call ends
            # now, before audio queued meanwhile could complete it as if all were well.
            self.events.fail(exc)

    async def _finish(self, task: UpstreamTask) -> None:
        for piece in self._text.tail():
            await task.send_text(piece)
        if not self._text.sent_any:
            # Nothing to speak: no finish-task (DashScope refuses a task without
            # text); the call ends with no audio, and the pool closes the socket.
            log.info("the stream had nothing to speak: no task-finish, no audio")
            if self._reader is not None:
                self._reader.cancel()
            await self.events.put(FINISHED)
            return
        await task.finish()
        self._deadlines.finish_sent()

    # ------------------------------------------------------------------ reader

    async def _read(self, lease: Lease) -> None:
        assert self._task is not None
        task = self._task
        try:
            while not task.state.is_over:
                event = await task.next_event()
                lease.touch()
                if isinstance(event, protocol.AudioReceived):
                    if self._frames == 0:
                        self.first_audio_ms = (time.monotonic() - self._arrived) * 1000
                        self._deadlines.audio_started()
                    self._frames += 1
                    await self._put(event.data)
                elif isinstance(event, protocol.SentenceEvent):
                    sentence = self._sentence(event)
                    if sentence is not None:
                        await self._put(sentence)
                elif isinstance(event, protocol.TaskFinished):
                    # Word timings DashScope reported only now (docs/dashscope-protocol.md §6): each
                    # sentence's timing again, with its words, before the end.
                    for late in event.late_sentences:
                        await self._put(self._late_sentence(late))
                elif isinstance(event, protocol.UnknownEvent):
                    log.debug("ignoring an upstream event of unknown name %r", event.name)
                    self._telemetry.unknown_event(event.name)
                self._deadlines.frame_received()
            await self._put(FINISHED)
        except asyncio.CancelledError:
            if not self._reader_timed_out:
                raise
            current = asyncio.current_task()
            if current is not None and current.uncancel() > 0:
                # Another cancel (the call stopping the pumps, an abort) came in the
                # same turn as the deadline's: asyncio delivered one CancelledError
                # for both. Stop; queuing the timeout now could wait for ever on a
                # full queue nobody drains any more.
                raise
            await self.events.put_error(self._deadlines.error())
        except BaseException as exc:  # noqa: BLE001 - the call fails with it, through the writer
            # After what the upstream sent before it failed: no audio byte is lost.
            await self.events.put_error(exc)

    async def _put(self, event: CallEvent) -> None:
        """Queue an event; while the caller holds it back, the upstream's clock stops."""
        if not self.events.full():
            self.events.put_nowait(event)
            return
        self._deadlines.pause()
        try:
            await self.events.put(event)
        finally:
            self._deadlines.resume()

    def _sentence(self, event: protocol.SentenceEvent) -> Sentence | None:
        """The sentence timing an event completes, if any (sentence-end does).

        A sentence's text may come only with its sentence-begin event, so it
        is kept until the task ends, for timings that come again with words.
        """
        if event.kind == "sentence-begin":
            self._sentence_text[event.index] = event.original_text
            return None
        if event.kind != "sentence-end":
            return None
        self._sentences += 1
        text = event.original_text or self._sentence_text.get(event.index, "")
        self._sentence_text[event.index] = text
        return Sentence(event.index, text, event.words, event.begin_time, event.end_time)

    def _late_sentence(self, late: protocol.SentenceTimes) -> Sentence:
        text = self._sentence_text.get(late.index, "")
        return Sentence(late.index, text, late.words, late.begin_time, late.end_time)

    def _on_overdue(self) -> None:
        reader = self._reader
        if reader is None or reader.done():
            return
        self._reader_timed_out = True
        reader.cancel()  # the reader turns this into the timeout error


def _kind(command: Command) -> str:
    return {Text: "text", Flush: "flush", Finish: "finish"}[type(command)]

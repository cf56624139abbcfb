"""One client connection to the emulator: the server side of §7's state machine.

::

    IDLE ──run-task──▶ STARTING ──task-started──▶ RUNNING ──finish-task──▶ FINISHING
     ▲                    │                        │  │                      │
     │                    │ task-failed            │  └─cancel─▶ CANCELLING  │
     │                    ▼                        ▼               │         │
     │                 FAILED ◀──────────── task-failed            │         │
     │                    │ close 1000 (close_after_failure)       │         │
     └────────────────────┴──── task-finished ◀────────────────────┴─────────┘

The session reads client frames; the running :class:`~sidecar.emulator.task.TaskRun`
writes events and audio. A run-task while a task runs ends that task and
starts the new one (§7, knob ``run_task_while_running``). Other messages that
do not fit the state fail the task ([EMU] choices, §15); late messages for
tasks that already ended on this connection, and client binary frames, are
ignored. Unparseable JSON, and a field outside the SDKs' envelope (knob
``reject_unexpected_fields``), close the connection with 1007.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections import deque
from typing import Final, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from sidecar.emulator.codes import BURST_RATE, RATE_QUOTA, message_for
from sidecar.emulator.knobs import EmulatorKnobs
from sidecar.emulator.pacer import Pacer
from sidecar.emulator.params import INVALID_PARAMETER, task_params
from sidecar.emulator.stats import StatsBook, TaskRecord
from sidecar.emulator.task import TaskPhase, TaskRun
from sidecar.protocol import (
    ContinueTask,
    FinishTask,
    ProtocolViolation,
    RunTask,
    parse_client_frame,
    task_failed_event,
    task_started_event,
)

__all__ = ["Session", "SessionHost", "SessionState"]

_log = logging.getLogger(__name__)

_ENDED_IDS_KEPT: Final = 64
# A close frame's reason holds at most 123 bytes (RFC 6455 §5.5).
_MAX_REASON: Final = 120


class SessionState(enum.Enum):
    """Where one connection stands (§7), from the server's side."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    FINISHING = "finishing"
    CANCELLING = "cancelling"
    FAILED = "failed"
    CLOSED = "closed"


class SessionHost(Protocol):
    """What a session needs from the emulator that owns it."""

    knobs: EmulatorKnobs
    book: StatsBook
    pacer: Pacer

    def next_task_ordinal(self) -> int: ...

    def take_start(self) -> bool:
        """Return False when the burst limit refuses a task start (§14)."""
        ...


class Session:
    """Serves one WebSocket connection until it is gone."""

    def __init__(self, host: SessionHost, connection: ServerConnection, connection_id: int) -> None:
        self._host = host
        self._ws = connection
        self.connection_id = connection_id
        self._state = SessionState.IDLE
        self._run: TaskRun | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._ended_ids: deque[str] = deque(maxlen=_ENDED_IDS_KEPT)
        self._loop = asyncio.get_running_loop()
        self._idle_since = self._loop.time()
        # The idle timeout is a plain timer, re-armed on every state change:
        # a watchdog task waking through wait_for cost two tasks per synthesis.
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._serving = False

    @property
    def state(self) -> SessionState:
        if self._run is not None and self._state is SessionState.RUNNING:
            phase = self._run.phase
            if phase is TaskPhase.FINISHING:
                return SessionState.FINISHING
            if phase is TaskPhase.CANCELLING:
                return SessionState.CANCELLING
        return self._state

    def __repr__(self) -> str:
        task = f" task={self._run.task_id}" if self._run is not None else ""
        return f"<Session #{self.connection_id} {self.state.value}{task}>"

    def wake(self) -> None:
        """A knob changed: re-evaluate timers now."""
        self._rearm_idle()
        if self._run is not None:
            self._run.wake()

    async def serve(self) -> None:
        """Read frames until the connection is gone; return only then."""
        self._serving = True
        self._rearm_idle()
        try:
            async for frame in self._ws:
                if isinstance(frame, bytes):
                    continue  # TTS clients send no binary frames (§3); ignore them
                if not await self._on_text(frame):
                    break
        except ConnectionClosed:
            pass
        finally:
            self._serving = False
            self._rearm_idle()  # cancels the timer
            if self._idle_task is not None:
                self._idle_task.cancel()
            if self._run is not None:
                self._run.abandon()
            if self._run_task is not None:
                await asyncio.shield(self._run_task)
            self._state = SessionState.CLOSED

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection (the listener aborts it if the peer stalls)."""
        self._state = SessionState.CLOSED
        await self._ws.close(code, reason)

    # -- idle connections (§7) ---------------------------------------------

    def _rearm_idle(self) -> None:
        """Schedule the idle check for the current state and knobs (or none)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._serving and self._idle_task is None and self._state is SessionState.IDLE:
            deadline = self._idle_since + self._host.knobs.idle_timeout_s
            self._idle_timer = self._loop.call_at(deadline, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._idle_timer = None
        deadline = self._idle_since + self._host.knobs.idle_timeout_s
        if self._state is not SessionState.IDLE or self._loop.time() < deadline:
            self._rearm_idle()
        else:
            self._idle_task = asyncio.create_task(self._idle_timeout())

    async def _idle_timeout(self) -> None:
        self._host.book.idle_closed()
        if self._host.knobs.drop_idle_silently:
            _log.info("connection #%d idle: dropping it silently", self.connection_id)
            self._host.book.dropped()
            self._state = SessionState.CLOSED
            self._ws.transport.abort()
        else:
            _log.info("connection #%d idle: closing it", self.connection_id)
            await self.close(CloseCode.NORMAL_CLOSURE, "idle timeout")

    # -- client frames --------------------------------------------------------

    async def _on_text(self, frame: str) -> bool:
        """Handle one text frame; return False when the connection must stop reading."""
        if self._state in (SessionState.FAILED, SessionState.CLOSED):
            return True  # closing: late messages are ignored
        try:
            message = parse_client_frame(frame, strict=self._host.knobs.reject_unexpected_fields)
        except ProtocolViolation as violation:
            return await self._on_violation(frame, violation)
        if isinstance(message, RunTask):
            if self._run is not None:
                mode = self._host.knobs.run_task_while_running
                if mode == "fail":
                    self._fail_running(f"task {message.task_id} started while task is running")
                    return True
                await self._interrupt(self._run, send_finished=mode == "finish-old")
                if self._state is not SessionState.IDLE:
                    return True  # the connection went away meanwhile
            await self._start(message)
            return True
        run = self._run
        if run is None or message.task_id != run.task_id:
            if message.task_id in self._ended_ids:
                return True  # late message for a task that already ended (§12)
            if run is not None:
                self._fail_running(f"task_id {message.task_id} does not match the running task")
            else:
                await self._refuse(message.task_id, INVALID_PARAMETER, "task not found")
            return True
        if isinstance(message, ContinueTask):
            self._on_continue(run, message)
        else:
            self._on_finish(run, message)
        return True

    async def _on_violation(self, frame: str, violation: ProtocolViolation) -> bool:
        task_id = _task_id_of(frame)
        if violation.code == "InvalidPayload" or task_id is None:
            _log.info("connection #%d: %s, closing 1007", self.connection_id, violation.message)
            reason = violation.message.encode()[:_MAX_REASON].decode(errors="ignore")
            await self.close(CloseCode.INVALID_DATA, reason)
            return False
        if task_id in self._ended_ids:
            return True
        if self._run is not None:
            if task_id == self._run.task_id:
                self._run.fail(violation.code, violation.message)
            else:
                self._fail_running(f"task_id {task_id} does not match the running task")
        else:
            await self._refuse(task_id, violation.code, violation.message)
        return True

    def _on_continue(self, run: TaskRun, message: ContinueTask) -> None:
        if run.phase is TaskPhase.CANCELLING:
            return
        if run.phase is TaskPhase.FINISHING:
            run.fail(INVALID_PARAMETER, "continue-task is not allowed after finish-task")
            return
        if message.text is None:
            run.flush()
            return
        try:
            run.add_text(message.text)
        except ProtocolViolation as violation:
            run.fail(violation.code, violation.message)

    def _on_finish(self, run: TaskRun, message: FinishTask) -> None:
        if run.phase is TaskPhase.CANCELLING:
            return
        if message.cancel and self._host.knobs.cancel_supported:
            run.cancel()
        elif run.phase is TaskPhase.RUNNING:
            run.finish()
        # a repeated finish-task while finishing changes nothing

    async def _interrupt(self, run: TaskRun, *, send_finished: bool) -> None:
        """End the running task for a new run-task (§7) and wait until it has ended."""
        run.interrupt(send_finished=send_finished)
        if self._run_task is not None:
            await asyncio.shield(self._run_task)

    def _fail_running(self, message: str) -> None:
        assert self._run is not None
        self._run.fail(INVALID_PARAMETER, message)

    # -- task life cycle ------------------------------------------------------

    async def _start(self, message: RunTask) -> None:
        host = self._host
        knobs = host.knobs
        self._state = SessionState.STARTING
        self._rearm_idle()
        record = TaskRecord(
            task_id=message.task_id,
            connection_id=self.connection_id,
            model=message.model,
            voice=str(message.parameters.get("voice") or ""),
            format=str(message.parameters.get("format", "")),
            sample_rate=0,
        )
        try:
            params = task_params(message, knobs)
        except ProtocolViolation as violation:
            await self._refuse_record(record, violation.code, violation.message)
            return
        record.format = params.audio.format
        record.sample_rate = params.audio.sample_rate
        limit = knobs.max_concurrent_tasks
        if limit is not None and host.book.running_tasks >= limit:
            await self._refuse_record(record, *RATE_QUOTA)
            return
        if not host.take_start():
            await self._refuse_record(record, *BURST_RATE)
            return
        ordinal = host.next_task_ordinal()
        if knobs.fail_start_every and ordinal % knobs.fail_start_every == 0:
            message_ = knobs.fail_message or message_for(knobs.fail_code)
            await self._refuse_record(record, knobs.fail_code, message_)
            return
        host.book.task_admitted(record)
        run = TaskRun(
            connection=self._ws,
            params=params,
            record=record,
            knobs=knobs,
            book=host.book,
            ordinal=ordinal,
            pacer=host.pacer,
        )
        self._run = run
        self._state = SessionState.RUNNING
        try:
            if knobs.start_delay_s > 0:
                await asyncio.sleep(knobs.start_delay_s)
            await self._ws.send(task_started_event(message.task_id))
        except ConnectionClosed:
            run.abandon()
        else:
            run.started()
            host.book.task_started()
        self._run_task = asyncio.create_task(self._drive(run))

    async def _drive(self, run: TaskRun) -> None:
        outcome = await run.run()
        self._host.book.task_ended(run.record)
        self._ended_ids.append(run.task_id)
        self._run = None
        self._run_task = None
        if outcome == "failed":
            await self._after_failure()
        elif self._state is not SessionState.CLOSED:
            self._state = SessionState.IDLE
            self._idle_since = self._loop.time()
            self._rearm_idle()

    async def _refuse(self, task_id: str, code: str, message: str) -> None:
        """Answer task-failed for a task that never started (nothing recorded)."""
        try:
            await self._ws.send(task_failed_event(task_id, code, message))
        except ConnectionClosed:
            return
        await self._after_failure()

    async def _refuse_record(self, record: TaskRecord, code: str, message: str) -> None:
        record.outcome = "failed"
        record.error_code = code
        record.error_message = message
        self._host.book.task_refused(record)
        self._ended_ids.append(record.task_id)
        await self._refuse(record.task_id, code, message)

    async def _after_failure(self) -> None:
        """After task-failed the connection is finished (§7); close it unless told not to."""
        if self._host.knobs.close_after_failure:
            self._state = SessionState.FAILED
            await self.close(CloseCode.NORMAL_CLOSURE, "task failed")
        else:
            self._state = SessionState.IDLE
            self._idle_since = self._loop.time()
            self._rearm_idle()


def _task_id_of(frame: str) -> str | None:
    """Return header.task_id of a frame that parse_client_frame refused, if any."""
    try:
        message = json.loads(frame)
        task_id = message["header"]["task_id"]
    except (ValueError, KeyError, TypeError):
        return None
    return task_id if isinstance(task_id, str) and task_id else None

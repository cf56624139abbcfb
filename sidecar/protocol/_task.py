"""The client-side task state machine (§7)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.protocol._errors import InvalidTaskState, UnexpectedFrame
from sidecar.protocol._events import (
    AudioReceived,
    SentenceEvent,
    ServerEvent,
    TaskFailed,
    TaskFinished,
    TaskStarted,
    parse_server_frame,
)
from sidecar.protocol._messages import ContinueTask, FinishTask, RunTask
from sidecar.protocol._text import MAX_CHARS_PER_MESSAGE, count_characters

__all__ = ["ClientTask", "TaskState"]


# --------------------------------------------------------------------------
# The client-side task state machine (§7)
# --------------------------------------------------------------------------


class TaskState(enum.Enum):
    """Where one task stands, from the client's side (§7)."""

    CREATED = "created"
    STARTING = "starting"  # run-task sent, waiting for task-started
    STREAMING = "streaming"  # text may be sent
    FINISHING = "finishing"  # finish-task sent, audio still coming
    CANCELLING = "cancelling"  # cancel directive sent, waiting for task-finished
    FINISHED = "finished"  # task-finished received: the connection may be reused
    FAILED = "failed"  # task-failed or a protocol violation: discard the connection

    @property
    def is_over(self) -> bool:
        return self in (TaskState.FINISHED, TaskState.FAILED)


# Started and not over: where audio and task-finished may arrive (§7).
_IN_PROGRESS = (TaskState.STREAMING, TaskState.FINISHING, TaskState.CANCELLING)


@dataclass
class ClientTask:
    """One DashScope task as the client drives it.

    Every method that sends returns the frame to send; a method called in a
    state that does not allow it raises :class:`InvalidTaskState`. Events for
    other task ids are ignored, since the server may still deliver late events
    of an earlier task on a reused connection (§7 mixing ids).
    """

    task_id: str
    model: str
    parameters: Mapping[str, Any]
    state: TaskState = TaskState.CREATED
    characters_sent: int = 0
    billed_characters: int | None = None
    failure: TaskFailed | None = field(default=None, repr=False)

    def start(self) -> str:
        self._require(TaskState.CREATED)
        self.state = TaskState.STARTING
        return RunTask(self.task_id, self.model, self.parameters).encode()

    def send_text(self, text: str) -> str:
        """Return the continue-task frame for ``text`` (must fit one message)."""
        self._require(TaskState.STREAMING)
        if not text:
            raise ValueError("text must not be empty")
        ssml = bool(self.parameters.get("enable_ssml"))
        count = count_characters(text, ssml=ssml)
        if count > MAX_CHARS_PER_MESSAGE:
            raise ValueError(f"text has {count} characters, over {MAX_CHARS_PER_MESSAGE}")
        self.characters_sent += count
        return ContinueTask(self.task_id, text).encode()

    def flush(self) -> str:
        self._require(TaskState.STREAMING)
        return ContinueTask(self.task_id, None).encode()

    def finish(self) -> str:
        self._require(TaskState.STREAMING)
        self.state = TaskState.FINISHING
        return FinishTask(self.task_id).encode()

    def cancel(self) -> str:
        """Return the cancel frame; allowed once the task has started (§4.4)."""
        self._require(TaskState.STREAMING, TaskState.FINISHING)
        self.state = TaskState.CANCELLING
        return FinishTask(self.task_id, cancel=True).encode()

    def receive_text(self, frame: str) -> ServerEvent | None:
        """Feed one text frame; return its event, or None if it is for another task."""
        event = parse_server_frame(frame)
        if event.task_id != self.task_id:
            return None
        if isinstance(event, SentenceEvent):
            if event.characters is not None:
                self.billed_characters = event.characters
        elif isinstance(event, TaskFailed):
            self.state = TaskState.FAILED
            self.failure = event
        elif isinstance(event, TaskStarted):
            if self.state is not TaskState.STARTING:
                self._violate(f"task-started in state {self.state.value}")
            self.state = TaskState.STREAMING
        elif isinstance(event, TaskFinished):
            if self.state not in _IN_PROGRESS:
                self._violate(f"task-finished in state {self.state.value}")
            self.state = TaskState.FINISHED
            self.billed_characters = event.characters
        return event

    def receive_bytes(self, frame: bytes) -> AudioReceived:
        """Feed one binary frame: audio of this task (binary frames carry no task id)."""
        if self.state not in _IN_PROGRESS:
            self._violate(f"audio in state {self.state.value}")
        return AudioReceived(frame)

    def _require(self, *allowed: TaskState) -> None:
        if self.state not in allowed:
            names = ", ".join(s.value for s in allowed)
            raise InvalidTaskState(f"task is {self.state.value}; this needs {names}")

    def _violate(self, what: str) -> None:
        self.state = TaskState.FAILED
        raise UnexpectedFrame(what)

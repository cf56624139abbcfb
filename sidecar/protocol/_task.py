"""The client-side task state machine (§7)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sidecar.protocol._errors import InvalidTaskState, UnexpectedFrame
from sidecar.protocol._events import (
    AudioReceived,
    SentenceEvent,
    ServerEvent,
    TaskFailed,
    TaskFinished,
    TaskStarted,
    parse_server_frame_with_uuid,
)
from sidecar.protocol._messages import ContinueTask, FinishTask, RunTask
from sidecar.protocol._text import MAX_CHARS_PER_MESSAGE, count_characters

__all__ = ["ClientTask", "TaskState"]


class TaskState(enum.Enum):
    """Where one task stands, from the client's side (§7)."""

    CREATED = "created"
    STARTING = "starting"  # run-task sent, waiting for task-started
    STREAMING = "streaming"  # text may be sent
    FINISHING = "finishing"  # finish-task sent, audio still coming
    CANCELLING = "cancelling"  # cancel sent, waiting for task-finished; audio is dropped
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

    What the task keeps from the events it saw:

    - ``billed_characters``: the last ``usage.characters`` of any event of the
      task (result-generated or task-finished); an event without ``usage``
      leaves it as it was (§6);
    - ``request_uuid``: the last non-empty ``header.attributes.request_uuid``
      (task-finished carries it, §6), the id Alibaba support asks for;
    - which sentences' word timings were already delivered, so that
      :attr:`TaskFinished.late_sentences` holds only the others (§6).
    """

    task_id: str
    model: str
    parameters: Mapping[str, Any]
    state: TaskState = TaskState.CREATED
    characters_sent: int = 0
    billed_characters: int | None = None
    request_uuid: str = ""
    failure: TaskFailed | None = field(default=None, repr=False)
    # Indexes of the sentences whose words a result-generated event delivered.
    _timed: set[int] = field(default_factory=set, init=False, repr=False)

    @property
    def accepts_text(self) -> bool:
        """Return True when :meth:`send_text`, :meth:`flush` and :meth:`finish` are allowed."""
        return self.state is TaskState.STREAMING

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
        """Return the cancel frame (finish-task with the cancel directive, §4.4).

        Allowed once the task has started. From then on audio is dropped here
        (:meth:`receive_bytes` returns None) until task-finished. The official
        SDKs send it; the sidecar does not (it closes the socket, the documented
        way, §7), but the core speaks what both kinds of client send.
        """
        self._require(TaskState.STREAMING, TaskState.FINISHING)
        self.state = TaskState.CANCELLING
        return FinishTask(self.task_id, cancel=True).encode()

    def receive_text(self, frame: str) -> ServerEvent | None:
        """Feed one text frame; return its event, or None if it is for another task.

        An event whose name is unknown comes back as
        :class:`~sidecar.protocol.UnknownEvent` and changes nothing. Raises
        :class:`UnexpectedFrame` (and the task fails) for a malformed frame or
        an event that does not fit the state.
        """
        try:
            event, uuid = parse_server_frame_with_uuid(frame)
        except UnexpectedFrame:
            self.state = TaskState.FAILED
            raise
        if event.task_id != self.task_id:
            return None
        if uuid:
            self.request_uuid = uuid
        if isinstance(event, SentenceEvent):
            if event.characters is not None:
                self.billed_characters = event.characters
            if event.words:
                self._timed.add(event.index)
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
            if event.characters is not None:
                self.billed_characters = event.characters
            if event.late_sentences:
                event = self._only_late(event)
        return event

    def receive_bytes(self, frame: bytes) -> AudioReceived | None:
        """Feed one binary frame: audio of this task (binary frames carry no task id).

        Return None while cancelling: the audio of a cancelled task is dropped
        here, not by each driver.
        """
        state = self.state
        if state is TaskState.STREAMING or state is TaskState.FINISHING:
            return AudioReceived(frame)
        if state is TaskState.CANCELLING:
            return None
        self._violate(f"audio in state {state.value}")

    def _only_late(self, event: TaskFinished) -> TaskFinished:
        """Keep the task-finished sentences whose words no earlier event delivered."""
        late = []
        for sentence in event.late_sentences:
            if sentence.index not in self._timed:
                self._timed.add(sentence.index)
                late.append(sentence)
        if len(late) == len(event.late_sentences):
            return event
        return dataclasses.replace(event, late_sentences=tuple(late))

    def _require(self, *allowed: TaskState) -> None:
        if self.state not in allowed:
            names = ", ".join(s.value for s in allowed)
            raise InvalidTaskState(f"task is {self.state.value}; this needs {names}")

    def _violate(self, what: str) -> NoReturn:
        self.state = TaskState.FAILED
        raise UnexpectedFrame(what)

"""The DashScope CosyVoice WebSocket protocol, without I/O.

This module imports neither asyncio nor websockets: text frames and binary
frames go in, typed events come out, and commands come back as the JSON text
frames to send. Two drivers use it, which keeps it honest: the upstream client
connection (``sidecar.upstream``) and the emulator (``sidecar.emulator``).

Section numbers (§) refer to ``shared/dashscope-protocol.md``, the protocol as
the official SDKs speak it.

Client side::

    task = ClientTask(task_id, model="cosyvoice-v3-flash", parameters={...})
    send(task.start())                     # run-task
    task.receive_text(frame)               # -> TaskStarted
    send(task.send_text("Hello."))         # continue-task
    send(task.finish())                    # finish-task
    task.receive_bytes(frame)              # -> AudioReceived
    task.receive_text(frame)               # -> SentenceEvent | TaskFinished | TaskFailed

Server side (the emulator): :func:`parse_client_frame` turns a frame into a
:class:`ClientMessage` or raises :class:`ProtocolViolation`; the ``*_event``
functions build the server's JSON events.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "INPUT_TIMEOUT_S",
    "MAX_CHARS_PER_MESSAGE",
    "MAX_CHARS_PER_TASK",
    "AudioReceived",
    "ClientMessage",
    "ClientTask",
    "ContinueTask",
    "FinishTask",
    "InvalidTaskState",
    "ProtocolError",
    "ProtocolViolation",
    "RunTask",
    "SentenceEvent",
    "ServerEvent",
    "TaskFailed",
    "TaskFinished",
    "TaskStarted",
    "TaskState",
    "UnexpectedFrame",
    "Word",
    "count_characters",
    "new_task_id",
    "parse_client_frame",
    "result_generated_event",
    "split_text",
    "task_failed_event",
    "task_finished_event",
    "task_started_event",
]

# §4.2: per continue-task message, per task, and the input gap after which the
# server fails the task with CLIENT_ERROR.
MAX_CHARS_PER_MESSAGE: Final = 20_000
MAX_CHARS_PER_TASK: Final = 200_000
INPUT_TIMEOUT_S: Final = 23.0

_STREAMING: Final = "duplex"
_SSML_TAG = re.compile(r"<[^<>]*>")
# Where a long fragment may be cut (§4.2 lets fragments end anywhere, but a cut
# at a sentence end, then at a space, keeps the server's segmentation natural).
_SENTENCE_END = re.compile(r"[.!?;。！？；…\n]+[\"'”’)）]*\s*")
_SPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ProtocolError(Exception):
    """Base of the errors raised by this module."""


class InvalidTaskState(ProtocolError):
    """Raised when an action does not fit the task's current state.

    A bug in the caller (the driver), not in the peer.
    """


class UnexpectedFrame(ProtocolError):
    """Raised when the server sends something the protocol does not allow.

    The peer's fault (or a protocol change): the connection must be discarded.
    """


class ProtocolViolation(ProtocolError):
    """Raised by :func:`parse_client_frame` when a client message is invalid.

    Carries the ``error_code`` / ``error_message`` a server answers with (§9).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --------------------------------------------------------------------------
# Counting and splitting text (§4.2)
# --------------------------------------------------------------------------

# CJK Unified Ideographs and extensions, plus compatibility ideographs.
_CJK_RANGES: Final = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2EBEF),
    (0x2F800, 0x2FA1F),
    (0x30000, 0x323AF),
)


def _is_cjk_ideograph(ch: str) -> bool:
    code = ord(ch)
    if code < 0x3400:
        return False
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def count_characters(text: str, *, ssml: bool = False) -> int:
    """Return the length of ``text`` as DashScope counts it.

    Each CJK ideograph counts 2, every other character 1; with ``ssml``, tags
    do not count (§4.2).
    """
    if ssml:
        text = _SSML_TAG.sub("", text)
    return len(text) + sum(1 for ch in text if _is_cjk_ideograph(ch))


def split_text(text: str, limit: int = MAX_CHARS_PER_MESSAGE) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` counted characters.

    Cuts after the last sentence end that fits, else after the last space,
    else at the limit itself; joining the pieces gives ``text`` back exactly.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2 (one CJK ideograph)")
    pieces: list[str] = []
    rest = text
    while count_characters(rest) > limit:
        cut = _prefix_fitting(rest, limit)
        window = rest[:cut]
        boundary = _last_boundary(_SENTENCE_END, window) or _last_boundary(_SPACE, window)
        if boundary:
            cut = boundary
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


def _prefix_fitting(text: str, limit: int) -> int:
    """Return the longest prefix length of ``text`` whose count is <= limit."""
    total = 0
    for i, ch in enumerate(text):
        total += 2 if _is_cjk_ideograph(ch) else 1
        if total > limit:
            return i
    return len(text)


def _last_boundary(pattern: re.Pattern[str], window: str) -> int:
    ends = [m.end() for m in pattern.finditer(window)]
    return ends[-1] if ends else 0


def new_task_id() -> str:
    """Return a fresh task id: 32 hex characters, as the Python SDK makes them (§3)."""
    return uuid.uuid4().hex


# --------------------------------------------------------------------------
# Client messages (§4)
# --------------------------------------------------------------------------


def _header(action: str, task_id: str) -> dict[str, str]:
    return {"action": action, "task_id": task_id, "streaming": _STREAMING}


@dataclass(frozen=True)
class RunTask:
    """``run-task`` (§4.1): starts a task with its model and parameters."""

    task_id: str
    model: str
    parameters: Mapping[str, Any]

    def encode(self) -> str:
        payload = {
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "model": self.model,
            "parameters": dict(self.parameters),
            "input": {},
        }
        return _dumps({"header": _header("run-task", self.task_id), "payload": payload})


@dataclass(frozen=True)
class ContinueTask:
    """``continue-task`` (§4.2, §4.3): a text fragment, or a flush when ``text`` is None."""

    task_id: str
    text: str | None = None

    @property
    def is_flush(self) -> bool:
        return self.text is None

    def encode(self) -> str:
        input_: dict[str, Any] = {"flush": True} if self.text is None else {"text": self.text}
        return _dumps(
            {"header": _header("continue-task", self.task_id), "payload": {"input": input_}}
        )


@dataclass(frozen=True)
class FinishTask:
    """``finish-task`` (§4.4); with ``cancel`` it carries the cancel directive."""

    task_id: str
    cancel: bool = False

    def encode(self) -> str:
        input_ = {"directive": "cancel"} if self.cancel else {}
        return _dumps(
            {"header": _header("finish-task", self.task_id), "payload": {"input": input_}}
        )


ClientMessage = RunTask | ContinueTask | FinishTask


def parse_client_frame(frame: str) -> ClientMessage:
    """Parse one client text frame, as a server does.

    Raises :class:`ProtocolViolation` with the server's error code and message
    when the frame is not a valid client message (§9). Unparseable JSON is a
    ``ProtocolViolation`` with code ``InvalidPayload``; a server closes the
    socket for it (§12).
    """
    try:
        message = json.loads(frame)
    except ValueError as exc:
        raise ProtocolViolation("InvalidPayload", "Invalid payload data") from exc
    if not isinstance(message, dict):
        raise ProtocolViolation("InvalidPayload", "Invalid payload data")
    header = message.get("header")
    payload = message.get("payload")
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ProtocolViolation("InvalidPayload", "Invalid payload data")
    action = header.get("action")
    task_id = header.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise ProtocolViolation("InvalidParameter", "task_id is required")
    input_ = payload.get("input")
    if not isinstance(input_, dict):
        raise ProtocolViolation("InvalidParameter", "task can not be null")
    if action == "run-task":
        return _parse_run_task(task_id, payload)
    if action == "continue-task":
        if input_.get("flush") is True and "text" not in input_:
            return ContinueTask(task_id, None)
        text = input_.get("text")
        if not isinstance(text, str):
            raise ProtocolViolation("InvalidParameter", "Invalid payload data")
        return ContinueTask(task_id, text)
    if action == "finish-task":
        return FinishTask(task_id, cancel=input_.get("directive") == "cancel")
    raise ProtocolViolation("InvalidParameter", f"Invalid action('{action}')")


def _parse_run_task(task_id: str, payload: dict[str, Any]) -> RunTask:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolViolation(
            "InvalidParameter",
            "Missing required parameter 'payload.model'! Please follow the protocol!",
        )
    parameters = payload.get("parameters")
    if not isinstance(parameters, dict):
        raise ProtocolViolation(
            "InvalidParameter",
            "Missing required parameter 'payload.parameters'! Please follow the protocol!",
        )
    return RunTask(task_id, model, parameters)


# --------------------------------------------------------------------------
# Server events (§6)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """One word's timing inside a sentence (§6), times in milliseconds."""

    text: str
    begin_index: int
    end_index: int
    begin_time: int
    end_time: int


@dataclass(frozen=True)
class TaskStarted:
    """``task-started``: the task accepts text now."""

    task_id: str


@dataclass(frozen=True)
class AudioReceived:
    """A binary frame: raw audio bytes of the current task (§3)."""

    data: bytes


@dataclass(frozen=True)
class SentenceEvent:
    """``result-generated``; ``kind`` is sentence-begin/-synthesis/-end, or "" (old shape)."""

    task_id: str
    kind: str
    index: int
    original_text: str
    words: tuple[Word, ...] = ()
    characters: int | None = None


@dataclass(frozen=True)
class TaskFinished:
    """``task-finished``: every audio byte of the task has been sent."""

    task_id: str
    characters: int | None


@dataclass(frozen=True)
class TaskFailed:
    """``task-failed``: the task is over and the connection must be discarded (§7)."""

    task_id: str
    code: str
    message: str


ServerEvent = TaskStarted | AudioReceived | SentenceEvent | TaskFinished | TaskFailed
# The events that arrive in text frames (every one names its task).
_TextEvent = TaskStarted | SentenceEvent | TaskFinished | TaskFailed


def _server_header(task_id: str, event: str, **extra: str) -> dict[str, Any]:
    return {"task_id": task_id, "event": event, **extra, "attributes": {}}


def task_started_event(task_id: str) -> str:
    return _dumps({"header": _server_header(task_id, "task-started"), "payload": {}})


def result_generated_event(
    task_id: str,
    kind: str,
    index: int,
    *,
    original_text: str | None = None,
    words: tuple[Word, ...] = (),
    characters: int | None = None,
) -> str:
    output: dict[str, Any] = {
        "type": kind,
        "sentence": {"index": index, "words": [_word_json(w) for w in words]},
    }
    if original_text is not None:
        output["original_text"] = original_text
    payload: dict[str, Any] = {"output": output}
    if characters is not None:
        payload["usage"] = {"characters": characters}
    return _dumps({"header": _server_header(task_id, "result-generated"), "payload": payload})


def task_finished_event(task_id: str, characters: int) -> str:
    return _dumps(
        {
            "header": _server_header(task_id, "task-finished"),
            "payload": {"output": {}, "usage": {"characters": characters}},
        }
    )


def task_failed_event(task_id: str, code: str, message: str) -> str:
    header = _server_header(task_id, "task-failed", error_code=code, error_message=message)
    return _dumps({"header": header, "payload": {}})


def _word_json(word: Word) -> dict[str, Any]:
    return {
        "text": word.text,
        "begin_index": word.begin_index,
        "end_index": word.end_index,
        "begin_time": word.begin_time,
        "end_time": word.end_time,
    }


def _parse_server_frame(frame: str) -> _TextEvent:
    try:
        message = json.loads(frame)
        header = message["header"]
        task_id = header["task_id"]
        event = header["event"]
        payload = message.get("payload") or {}
    except (ValueError, KeyError, TypeError) as exc:
        raise UnexpectedFrame(f"malformed server event: {frame[:200]!r}") from exc
    if event == "task-started":
        return TaskStarted(task_id)
    if event == "task-finished":
        return TaskFinished(task_id, _usage_characters(payload))
    if event == "task-failed":
        return TaskFailed(
            task_id, str(header.get("error_code", "")), str(header.get("error_message", ""))
        )
    if event == "result-generated":
        return _parse_result(task_id, payload)
    raise UnexpectedFrame(f"unknown server event {event!r}")


def _parse_result(task_id: str, payload: dict[str, Any]) -> SentenceEvent:
    output = payload.get("output") or {}
    sentence = output.get("sentence") or {}
    words = tuple(
        Word(
            text=str(w.get("text", "")),
            begin_index=int(w.get("begin_index", 0)),
            end_index=int(w.get("end_index", 0)),
            begin_time=int(w.get("begin_time", 0)),
            end_time=int(w.get("end_time", 0)),
        )
        for w in sentence.get("words") or ()
    )
    return SentenceEvent(
        task_id=task_id,
        kind=str(output.get("type", "")),
        index=int(sentence.get("index", 0)),
        original_text=str(output.get("original_text", "")),
        words=words,
        characters=_usage_characters(payload),
    )


def _usage_characters(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("characters"), int):
        return int(usage["characters"])
    return None


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


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
        event = _parse_server_frame(frame)
        if event.task_id != self.task_id:
            return None
        if isinstance(event, TaskFailed):
            self.state = TaskState.FAILED
            self.failure = event
        elif isinstance(event, TaskStarted):
            if self.state is not TaskState.STARTING:
                self._violate(f"task-started in state {self.state.value}")
            self.state = TaskState.STREAMING
        elif isinstance(event, TaskFinished):
            if self.state not in (
                TaskState.STREAMING,
                TaskState.FINISHING,
                TaskState.CANCELLING,
            ):
                self._violate(f"task-finished in state {self.state.value}")
            self.state = TaskState.FINISHED
            self.billed_characters = event.characters
        elif isinstance(event, SentenceEvent) and event.characters is not None:
            self.billed_characters = event.characters
        return event

    def receive_bytes(self, frame: bytes) -> AudioReceived:
        """Feed one binary frame: audio of this task (binary frames carry no task id)."""
        if self.state not in (TaskState.STREAMING, TaskState.FINISHING, TaskState.CANCELLING):
            self._violate(f"audio in state {self.state.value}")
        return AudioReceived(frame)

    def _require(self, *allowed: TaskState) -> None:
        if self.state not in allowed:
            names = ", ".join(s.value for s in allowed)
            raise InvalidTaskState(f"task is {self.state.value}; this needs {names}")

    def _violate(self, what: str) -> None:
        self.state = TaskState.FAILED
        raise UnexpectedFrame(what)

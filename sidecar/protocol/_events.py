"""Server events (§6): what a server sends, and how a client parses it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sidecar.protocol._errors import UnexpectedFrame
from sidecar.protocol._messages import dumps as _dumps

__all__ = [
    "AudioReceived",
    "SentenceEvent",
    "ServerEvent",
    "TaskFailed",
    "TaskFinished",
    "TaskStarted",
    "TextEvent",
    "Word",
    "parse_server_frame",
    "result_generated_event",
    "task_failed_event",
    "task_finished_event",
    "task_started_event",
]


# --------------------------------------------------------------------------
# Server events (§6)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Word:
    """One word's timing inside a sentence (§6), times in milliseconds."""

    text: str
    begin_index: int
    end_index: int
    begin_time: int
    end_time: int


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """``task-started``: the task accepts text now."""

    task_id: str


@dataclass(frozen=True, slots=True)
class AudioReceived:
    """A binary frame: raw audio bytes of the current task (§3)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SentenceEvent:
    """``result-generated``; ``kind`` is sentence-begin/-synthesis/-end, or "" (old shape)."""

    task_id: str
    kind: str
    index: int
    original_text: str
    words: tuple[Word, ...] = ()
    characters: int | None = None


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """``task-finished``: every audio byte of the task has been sent."""

    task_id: str
    characters: int | None


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """``task-failed``: the task is over and the connection must be discarded (§7)."""

    task_id: str
    code: str
    message: str


ServerEvent = TaskStarted | AudioReceived | SentenceEvent | TaskFinished | TaskFailed
# The events that arrive in text frames (every one names its task).
TextEvent = TaskStarted | SentenceEvent | TaskFinished | TaskFailed


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


def parse_server_frame(frame: str) -> TextEvent:
    """Parse one server text frame (§6) into its event.

    Raises :class:`UnexpectedFrame` when the frame is not JSON, lacks
    ``header.task_id`` / ``header.event``, or names an unknown event.
    """
    try:
        message = json.loads(frame)
        header = message["header"]
        task_id = header["task_id"]
        event = header["event"]
        payload = message.get("payload") or {}
    except (ValueError, KeyError, TypeError) as exc:
        raise UnexpectedFrame(f"malformed server event: {frame[:200]!r}") from exc
    # result-generated first: it is every other frame of a task.
    if event == "result-generated":
        return _parse_result(task_id, payload)
    if event == "task-started":
        return TaskStarted(task_id)
    if event == "task-finished":
        return TaskFinished(task_id, _usage_characters(payload))
    if event == "task-failed":
        return TaskFailed(
            task_id, str(header.get("error_code", "")), str(header.get("error_message", ""))
        )
    raise UnexpectedFrame(f"unknown server event {event!r}")


def _parse_result(task_id: str, payload: dict[str, Any]) -> SentenceEvent:
    output = payload.get("output") or {}
    sentence = output.get("sentence") or {}
    words = sentence.get("words")
    return SentenceEvent(
        task_id,
        str(output.get("type", "")),
        int(sentence.get("index", 0)),
        str(output.get("original_text", "")),
        # Most events carry no words: skip building an empty tuple from a generator.
        tuple(_parse_word(w) for w in words) if words else (),
        _usage_characters(payload) if "usage" in payload else None,
    )


def _parse_word(word: dict[str, Any]) -> Word:
    return Word(
        text=str(word.get("text", "")),
        begin_index=int(word.get("begin_index", 0)),
        end_index=int(word.get("end_index", 0)),
        begin_time=int(word.get("begin_time", 0)),
        end_time=int(word.get("end_time", 0)),
    )


def _usage_characters(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("characters"), int):
        return int(usage["characters"])
    return None

"""Server events (§6): what a server sends, and how a client parses it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.protocol._errors import UnexpectedFrame
from sidecar.protocol._messages import dumps as _dumps

__all__ = [
    "AudioReceived",
    "Phoneme",
    "SentenceEvent",
    "SentenceTimes",
    "ServerEvent",
    "TaskFailed",
    "TaskFinished",
    "TaskStarted",
    "TextEvent",
    "UnknownEvent",
    "Word",
    "parse_server_frame",
    "parse_server_frame_with_uuid",
    "result_generated_event",
    "server_event",
    "task_failed_event",
    "task_finished_event",
    "task_started_event",
]


@dataclass(frozen=True, slots=True)
class Phoneme:
    """One phoneme of a word (§6, ``phoneme_timestamp_enabled``), times in milliseconds.

    The fields are the Java SDK's ``timestamp/Phoneme.java``: ``text`` and
    ``tone`` are strings, the times integers.
    """

    text: str
    tone: str
    begin_time: int
    end_time: int


@dataclass(frozen=True, slots=True)
class Word:
    """One word's timing inside a sentence (§6), times in milliseconds.

    ``phonemes`` is empty unless the task asked for ``phoneme_timestamp_enabled``.
    """

    text: str
    begin_index: int
    end_index: int
    begin_time: int
    end_time: int
    phonemes: tuple[Phoneme, ...] = ()


@dataclass(frozen=True, slots=True)
class SentenceTimes:
    """A sentence's timings as ``task-finished`` carries them (§6).

    ``begin_time``/``end_time`` are the sentence-level times when the server
    sends them, else None.
    """

    index: int
    words: tuple[Word, ...]
    begin_time: int | None = None
    end_time: int | None = None


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
    """``result-generated``; ``kind`` is sentence-begin/-synthesis/-end, or "" (old shape).

    ``characters`` is the task's running billed total when the event carries
    ``usage``; ``begin_time``/``end_time`` are the sentence-level times when
    the event carries them (§6).
    """

    task_id: str
    kind: str
    index: int
    original_text: str
    words: tuple[Word, ...] = ()
    characters: int | None = None
    begin_time: int | None = None
    end_time: int | None = None


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """``task-finished``: every audio byte of the task has been sent.

    ``characters`` is None when the event carries no ``usage`` (§6: the last
    ``usage`` of the task, wherever it came, is the billed count).
    ``request_uuid`` is ``header.attributes.request_uuid``, the id support
    asks for, or "". ``late_sentences`` holds the word timings this event
    carries (§6: the official pages disagree on whether words come in
    sentence-end or in task-finished). From :func:`parse_server_frame` it is
    every sentence with words in the frame; from
    :meth:`~sidecar.protocol.ClientTask.receive_text` only the sentences whose
    words had not already arrived in a result-generated event of the task, so
    a driver that delivers both never delivers a sentence's words twice.
    """

    task_id: str
    characters: int | None = None
    request_uuid: str = ""
    late_sentences: tuple[SentenceTimes, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """``task-failed``: the task is over and the connection must be discarded (§7)."""

    task_id: str
    code: str
    message: str
    request_uuid: str = ""


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A well-formed server event whose name this client does not know.

    Not an error (§6): both official SDKs skip events they do not know, so a
    server that adds an event must not fail tasks. ``name`` is ``header.event``.
    """

    task_id: str
    name: str


ServerEvent = TaskStarted | AudioReceived | SentenceEvent | TaskFinished | TaskFailed | UnknownEvent
# The events that arrive in text frames (every one names its task).
TextEvent = TaskStarted | SentenceEvent | TaskFinished | TaskFailed | UnknownEvent


# --------------------------------------------------------------------------
# Building events (the emulator's side)
# --------------------------------------------------------------------------


def _server_header(
    task_id: str, event: str, request_uuid: str = "", **extra: str
) -> dict[str, Any]:
    attributes = {"request_uuid": request_uuid} if request_uuid else {}
    return {"task_id": task_id, "event": event, **extra, "attributes": attributes}


def task_started_event(task_id: str) -> str:
    return _dumps({"header": _server_header(task_id, "task-started"), "payload": {}})


def result_generated_event(
    task_id: str,
    kind: str,
    index: int,
    *,
    original_text: str | None = None,
    words: Sequence[Word] = (),
    characters: int | None = None,
    begin_time: int | None = None,
    end_time: int | None = None,
) -> str:
    """Build a ``result-generated`` event; ``usage`` only when ``characters`` is given."""
    output: dict[str, Any] = {
        "type": kind,
        "sentence": _sentence_json(index, words, begin_time, end_time),
    }
    if original_text is not None:
        output["original_text"] = original_text
    payload: dict[str, Any] = {"output": output}
    if characters is not None:
        payload["usage"] = {"characters": characters}
    return _dumps({"header": _server_header(task_id, "result-generated"), "payload": payload})


def task_finished_event(
    task_id: str,
    characters: int | None = None,
    *,
    sentences: Sequence[SentenceTimes] = (),
    sentences_as_list: bool = False,
    request_uuid: str = "",
) -> str:
    """Build a ``task-finished`` event (§6).

    ``usage`` only when ``characters`` is given; ``request_uuid`` goes into
    ``header.attributes``. ``sentences`` go into ``payload.output.sentence``,
    the one-sentence shape the WebSocket page and the Java SDK show (at most
    one sentence then), or with ``sentences_as_list`` into a list
    ``payload.output.sentences``, a shape no official source shows but which
    the client tolerates.
    """
    output: dict[str, Any] = {}
    if sentences_as_list:
        output["sentences"] = [
            _sentence_json(s.index, s.words, s.begin_time, s.end_time) for s in sentences
        ]
    elif len(sentences) > 1:
        raise ValueError("payload.output.sentence holds one sentence; use sentences_as_list")
    elif sentences:
        s = sentences[0]
        output["sentence"] = _sentence_json(s.index, s.words, s.begin_time, s.end_time)
    payload: dict[str, Any] = {"output": output}
    if characters is not None:
        payload["usage"] = {"characters": characters}
    header = _server_header(task_id, "task-finished", request_uuid)
    return _dumps({"header": header, "payload": payload})


def task_failed_event(task_id: str, code: str, message: str, *, request_uuid: str = "") -> str:
    header = _server_header(
        task_id, "task-failed", request_uuid, error_code=code, error_message=message
    )
    return _dumps({"header": header, "payload": {}})


def server_event(task_id: str, name: str, payload: Mapping[str, Any]) -> str:
    """Build an event of any name (the emulator's events that clients do not know)."""
    return _dumps({"header": _server_header(task_id, name), "payload": dict(payload)})


def _sentence_json(
    index: int, words: Sequence[Word], begin_time: int | None, end_time: int | None
) -> dict[str, Any]:
    sentence: dict[str, Any] = {"index": index, "words": [_word_json(w) for w in words]}
    if begin_time is not None:
        sentence["begin_time"] = begin_time
    if end_time is not None:
        sentence["end_time"] = end_time
    return sentence


def _word_json(word: Word) -> dict[str, Any]:
    result: dict[str, Any] = {
        "text": word.text,
        "begin_index": word.begin_index,
        "end_index": word.end_index,
        "begin_time": word.begin_time,
        "end_time": word.end_time,
    }
    if word.phonemes:
        result["phonemes"] = [
            {"begin_time": p.begin_time, "end_time": p.end_time, "text": p.text, "tone": p.tone}
            for p in word.phonemes
        ]
    return result


# --------------------------------------------------------------------------
# Parsing events (the client's side)
# --------------------------------------------------------------------------


def parse_server_frame(frame: str) -> TextEvent:
    """Parse one server text frame (§6) into its event.

    An event name this module does not know gives :class:`UnknownEvent`.
    Raises :class:`UnexpectedFrame` when the frame is not JSON, lacks
    ``header.task_id`` / ``header.event``, or a known event's payload has the
    wrong types.
    """
    return parse_server_frame_with_uuid(frame)[0]


def parse_server_frame_with_uuid(frame: str) -> tuple[TextEvent, str]:
    """Like :func:`parse_server_frame`, also returning ``header.attributes.request_uuid`` or ""."""
    try:
        message = json.loads(frame)
        header = message["header"]
        task_id = header["task_id"]
        event = header["event"]
        payload = message.get("payload") or {}
        if not isinstance(task_id, str) or not isinstance(event, str):
            raise TypeError("task_id and event must be strings")
        # attributes is {} on almost every event: test it before looking inside.
        attributes = header.get("attributes")
        uuid = _request_uuid(attributes) if attributes else ""
        # result-generated first: it is every other frame of a task.
        if event == "result-generated":
            return _parse_result(task_id, payload), uuid
        if event == "task-started":
            return TaskStarted(task_id), uuid
        if event == "task-finished":
            output = payload.get("output") or {}
            finished = TaskFinished(
                task_id, _usage_characters(payload), uuid, _finished_sentences(output)
            )
            return finished, uuid
        if event == "task-failed":
            code = str(header.get("error_code", ""))
            return TaskFailed(task_id, code, str(header.get("error_message", "")), uuid), uuid
        return UnknownEvent(task_id, event), uuid
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnexpectedFrame(f"malformed server event: {frame[:200]!r}") from exc


def _request_uuid(attributes: Any) -> str:
    value = attributes.get("request_uuid") if isinstance(attributes, dict) else None
    return value if isinstance(value, str) else ""


def _parse_result(task_id: str, payload: dict[str, Any]) -> SentenceEvent:
    output = payload.get("output") or {}
    sentence = output.get("sentence") or {}
    words = sentence.get("words")
    # Most events carry no words and no sentence times: this runs for every
    # audio frame (sentence-synthesis), so the common case costs two lookups.
    begin = sentence.get("begin_time")
    end = sentence.get("end_time")
    return SentenceEvent(
        task_id,
        str(output.get("type", "")),
        int(sentence.get("index", 0)),
        str(output.get("original_text", "")),
        tuple(_parse_word(w) for w in words) if words else (),
        _usage_characters(payload) if "usage" in payload else None,
        None if begin is None else int(begin),
        None if end is None else int(end),
    )


def _finished_sentences(output: dict[str, Any]) -> tuple[SentenceTimes, ...]:
    """The sentences with words in a task-finished ``output``, in either shape.

    The documented shape is one object, ``output.sentence`` (WebSocket page,
    Java ``Sentence.from(output.sentence)``); a list, under ``sentence`` or
    ``sentences``, is accepted as well since no source says a task with
    several sentences gets only one.
    """
    found: list[SentenceTimes] = []
    for key in ("sentence", "sentences"):
        value = output.get(key)
        items = value if isinstance(value, list) else [value] if value else []
        for item in items:
            words = item.get("words")
            if words:
                found.append(
                    SentenceTimes(
                        int(item.get("index", 0)),
                        tuple(_parse_word(w) for w in words),
                        _optional_int(item, "begin_time"),
                        _optional_int(item, "end_time"),
                    )
                )
    return tuple(found)


def _parse_word(word: dict[str, Any]) -> Word:
    phonemes = word.get("phonemes")
    return Word(
        text=str(word.get("text", "")),
        begin_index=int(word.get("begin_index", 0)),
        end_index=int(word.get("end_index", 0)),
        begin_time=int(word.get("begin_time", 0)),
        end_time=int(word.get("end_time", 0)),
        phonemes=tuple(_parse_phoneme(p) for p in phonemes) if phonemes else (),
    )


def _parse_phoneme(phoneme: dict[str, Any]) -> Phoneme:
    return Phoneme(
        text=str(phoneme.get("text", "")),
        tone=str(phoneme.get("tone", "")),
        begin_time=int(phoneme.get("begin_time", 0)),
        end_time=int(phoneme.get("end_time", 0)),
    )


def _optional_int(mapping: dict[str, Any], key: str) -> int | None:
    value = mapping.get(key)
    return None if value is None else int(value)


def _usage_characters(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("characters"), int):
        return int(usage["characters"])
    return None

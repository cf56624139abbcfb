"""Client messages (§4): what a client sends, and how a server parses it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sidecar.protocol._errors import ProtocolViolation

__all__ = [
    "ClientMessage",
    "ContinueTask",
    "FinishTask",
    "RunTask",
    "dumps",
    "parse_client_frame",
    "unexpected_field",
]

_STREAMING: Final = "duplex"


# One encoder for every message: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(message: dict[str, Any]) -> str:
    """Encode a protocol message as the compact UTF-8 JSON both sides send."""
    return _ENCODER.encode(message)


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
        return dumps({"header": _header("run-task", self.task_id), "payload": payload})


@dataclass(frozen=True)
class ContinueTask:
    """``continue-task`` (§4.2, §4.3): a text fragment, or a flush when ``text`` is None."""

    task_id: str
    text: str | None = None

    def encode(self) -> str:
        input_: dict[str, Any] = {"flush": True} if self.text is None else {"text": self.text}
        return dumps(
            {"header": _header("continue-task", self.task_id), "payload": {"input": input_}}
        )


@dataclass(frozen=True)
class FinishTask:
    """``finish-task`` (§4.4); with ``cancel`` it carries the cancel directive."""

    task_id: str
    cancel: bool = False

    def encode(self) -> str:
        input_ = {"directive": "cancel"} if self.cancel else {}
        return dumps({"header": _header("finish-task", self.task_id), "payload": {"input": input_}})


ClientMessage = RunTask | ContinueTask | FinishTask


# The envelope the official SDKs send (§4): every message's top level and
# header, and the payload keys of any action (both SDKs repeat run-task's
# model, task_group, task and function in continue-task, Java its parameters
# too; both may add resources). What input and parameters hold is not checked:
# parameters pass extra keys through, and Java merges keys into a flush's input.
_TOP_KEYS: Final = frozenset({"header", "payload"})
_HEADER_KEYS: Final = frozenset({"action", "task_id", "streaming"})
_PAYLOAD_KEYS: Final = frozenset(
    {"task_group", "task", "function", "model", "parameters", "input", "resources"}
)


def unexpected_field(message: Mapping[str, Any]) -> str | None:
    """Return the path of the first field outside the SDKs' envelope (§4), or None.

    ``message`` is a decoded client message; for example ``header.foo``.
    """
    for key in message:
        if key not in _TOP_KEYS:
            return key
    for part, allowed in (("header", _HEADER_KEYS), ("payload", _PAYLOAD_KEYS)):
        value = message.get(part)
        if isinstance(value, dict):
            for key in value:
                if key not in allowed:
                    return f"{part}.{key}"
    return None


def parse_client_frame(frame: str, *, strict: bool = False) -> ClientMessage:
    """Parse one client text frame, as a server does.

    Raises :class:`ProtocolViolation` with the server's error code and message
    when the frame is not a valid client message (§9). Unparseable JSON is a
    ``ProtocolViolation`` with code ``InvalidPayload``; a server closes the
    socket for it with 1007 (§7). With ``strict``, so is a field outside the
    envelope the official SDKs send (see :func:`unexpected_field`).
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
    if strict and (field := unexpected_field(message)) is not None:
        raise ProtocolViolation("InvalidPayload", f"Unexpected field: {field}")
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

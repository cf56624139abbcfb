"""The DashScope CosyVoice WebSocket protocol, without I/O.

This module imports neither asyncio nor websockets: text frames and binary
frames go in, typed events come out, and commands come back as the JSON text
frames to send. Two drivers use it, which keeps it honest: the upstream client
connection (``sidecar.upstream``) and the emulator (``sidecar.emulator``).

Section numbers (§) refer to ``docs/dashscope-protocol.md``, the protocol as
the official documentation and SDKs describe it.

Client side::

    task = ClientTask(task_id, model="cosyvoice-v3-flash", parameters={...})
    send(task.start())                     # run-task
    task.receive_text(frame)               # -> TaskStarted
    send(task.send_text("Hello."))         # continue-task
    send(task.finish())                    # finish-task
    task.receive_bytes(frame)              # -> AudioReceived
    task.receive_text(frame)               # -> SentenceEvent | TaskFinished | TaskFailed
                                           #    | UnknownEvent (a new event: skip it)

Server side (the emulator): :func:`parse_client_frame` turns a frame into a
:class:`ClientMessage` or raises :class:`ProtocolViolation`; the ``*_event``
functions build the server's JSON events.
"""

from __future__ import annotations

from sidecar.protocol._errors import (
    InvalidTaskState,
    ProtocolError,
    ProtocolViolation,
    UnexpectedFrame,
)
from sidecar.protocol._events import (
    AudioReceived,
    Phoneme,
    SentenceEvent,
    SentenceTimes,
    ServerEvent,
    TaskFailed,
    TaskFinished,
    TaskStarted,
    UnknownEvent,
    Word,
    parse_server_frame,
    result_generated_event,
    server_event,
    task_failed_event,
    task_finished_event,
    task_started_event,
)
from sidecar.protocol._messages import (
    ClientMessage,
    ContinueTask,
    FinishTask,
    RunTask,
    parse_client_frame,
    unexpected_field,
)
from sidecar.protocol._task import ClientTask, TaskState
from sidecar.protocol._text import (
    INPUT_TIMEOUT_S,
    MAX_CHARS_PER_MESSAGE,
    MAX_CHARS_PER_TASK,
    MAX_INSTRUCTION_CHARS,
    count_characters,
    new_task_id,
    split_text,
    strip_ssml,
)

__all__ = [
    "INPUT_TIMEOUT_S",
    "MAX_CHARS_PER_MESSAGE",
    "MAX_CHARS_PER_TASK",
    "MAX_INSTRUCTION_CHARS",
    "AudioReceived",
    "ClientMessage",
    "ClientTask",
    "ContinueTask",
    "FinishTask",
    "InvalidTaskState",
    "Phoneme",
    "ProtocolError",
    "ProtocolViolation",
    "RunTask",
    "SentenceEvent",
    "SentenceTimes",
    "ServerEvent",
    "TaskFailed",
    "TaskFinished",
    "TaskStarted",
    "TaskState",
    "UnexpectedFrame",
    "UnknownEvent",
    "Word",
    "count_characters",
    "new_task_id",
    "parse_client_frame",
    "parse_server_frame",
    "result_generated_event",
    "server_event",
    "split_text",
    "strip_ssml",
    "task_failed_event",
    "task_finished_event",
    "task_started_event",
    "unexpected_field",
]

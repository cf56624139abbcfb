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

from sidecar.protocol._errors import (
    InvalidTaskState,
    ProtocolError,
    ProtocolViolation,
    UnexpectedFrame,
)
from sidecar.protocol._events import (
    AudioReceived,
    SentenceEvent,
    ServerEvent,
    TaskFailed,
    TaskFinished,
    TaskStarted,
    Word,
    result_generated_event,
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
    "strip_ssml",
    "task_failed_event",
    "task_finished_event",
    "task_started_event",
]

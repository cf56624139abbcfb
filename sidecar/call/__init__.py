"""One synthesis: a caller's commands in, one DashScope task, events out.

Public face: :class:`Call` (lease, start, pump, stop), the commands
(:class:`Text`, :class:`Flush`, :class:`Finish`), the events a call emits
(audio ``bytes``, :class:`Sentence`, :data:`FLUSHED`, :data:`FINISHED`) and
:class:`TaskParams`. No generated protobuf below this line: the gRPC edge
(``sidecar.rpc``) translates. Inside: ``_call`` (the pumps and their life
cycle), ``_text`` (what text goes upstream, and when), ``_deadlines`` and
``_watchdog`` (how long the upstream may stay silent), ``_events``,
``_params``.
"""

from __future__ import annotations

from sidecar.call._call import Call, Delivery, Started
from sidecar.call._events import (
    FINISHED,
    FLUSHED,
    CallEvent,
    CallEvents,
    Command,
    Finish,
    Finished,
    Flush,
    Flushed,
    Sentence,
    Text,
)
from sidecar.call._params import TaskParams
from sidecar.call._text import speakable
from sidecar.call._watchdog import Watchdog

__all__ = [
    "FINISHED",
    "FLUSHED",
    "Call",
    "CallEvent",
    "CallEvents",
    "Command",
    "Delivery",
    "Finish",
    "Finished",
    "Flush",
    "Flushed",
    "Sentence",
    "Started",
    "TaskParams",
    "Text",
    "Watchdog",
    "speakable",
]

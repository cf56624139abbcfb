"""What the emulator counts, for tests to read (§12).

:class:`StatsBook` is the emulator's mutable ledger; :meth:`StatsBook.snapshot`
returns an :class:`EmulatorStats` copy that later events do not change. The
JSON shape (``GET /_emulator/stats``) is part of the sidecar's runtime contract:
``connections_opened``, ``connections_open`` and ``tasks`` with the
:class:`TaskRecord` fields are relied upon by client tests in other languages.

Counting rules:

- a connection is open from the moment its WebSocket handshake succeeds until
  its TCP connection is gone;
- ``client_close_codes`` counts the close frames a client sent first (an echo
  of the emulator's own close frame is not counted); a connection that ended
  without any close frame from the client counts as 1006;
- ``outcomes`` counts tasks that ended (``running`` tasks are not in it).
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "EMPTY_SHA256",
    "MAX_TASK_RECORDS",
    "EmulatorStats",
    "Outcome",
    "StatsBook",
    "TaskRecord",
]

MAX_TASK_RECORDS: Final = 1000
EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()

Outcome = Literal["running", "finished", "failed", "cancelled", "interrupted", "abandoned"]


@dataclass
class TaskRecord:
    """One task the emulator saw, from run-task on.

    ``outcome``: ``finished`` (task-finished after finish-task), ``cancelled``
    (task-finished after the cancel directive), ``failed`` (task-failed sent;
    ``error_code``/``error_message`` say why), ``interrupted`` (a new run-task
    on the connection ended it, §7), ``abandoned`` (the connection
    went away while the task ran: the client closed or dropped it, or the
    emulator dropped it on purpose, then ``error_code`` is ``EmulatorDrop``).
    ``request_uuid`` is what task-finished carried in ``header.attributes``.
    ``audio_sha256`` is the SHA-256 of every binary frame sent, concatenated;
    while the task runs it is current in snapshots only (the live record's
    value is filled in when the task ends).
    """

    task_id: str
    connection_id: int
    model: str
    voice: str
    format: str
    sample_rate: int
    outcome: Outcome = "running"
    audio_bytes: int = 0
    audio_sha256: str = EMPTY_SHA256
    characters: int = 0
    error_code: str | None = None
    error_message: str | None = None
    sentences: int = 0
    request_uuid: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "connection_id": self.connection_id,
            "model": self.model,
            "voice": self.voice,
            "format": self.format,
            "sample_rate": self.sample_rate,
            "outcome": self.outcome,
            "audio_bytes": self.audio_bytes,
            "audio_sha256": self.audio_sha256,
            "characters": self.characters,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "sentences": self.sentences,
            "request_uuid": self.request_uuid,
        }


@dataclass(frozen=True)
class EmulatorStats:
    """A snapshot of the emulator's counters; see the module docstring for the rules."""

    connections_opened: int = 0
    connections_open: int = 0
    peak_open_connections: int = 0
    handshakes_rejected: int = 0
    tasks_started: int = 0
    running_tasks: int = 0
    peak_concurrent_tasks: int = 0
    idle_timeout_closes: int = 0
    connections_dropped: int = 0
    client_close_codes: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    tasks: list[TaskRecord] = field(default_factory=list)

    def task(self, task_id: str) -> TaskRecord | None:
        """Return the latest record of ``task_id``, or None if unknown."""
        for record in reversed(self.tasks):
            if record.task_id == task_id:
                return record
        return None

    def tasks_on(self, connection_id: int) -> list[TaskRecord]:
        """Return the records of the tasks run on one connection, oldest first."""
        return [r for r in self.tasks if r.connection_id == connection_id]

    def to_dict(self) -> dict[str, Any]:
        return {
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open,
            "peak_open_connections": self.peak_open_connections,
            "handshakes_rejected": self.handshakes_rejected,
            "tasks_started": self.tasks_started,
            "running_tasks": self.running_tasks,
            "peak_concurrent_tasks": self.peak_concurrent_tasks,
            "idle_timeout_closes": self.idle_timeout_closes,
            "connections_dropped": self.connections_dropped,
            "client_close_codes": {str(k): v for k, v in sorted(self.client_close_codes.items())},
            "outcomes": dict(sorted(self.outcomes.items())),
            "tasks": [r.to_dict() for r in self.tasks],
        }


class StatsBook:
    """The emulator's mutable counters; every change calls ``on_change``."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._on_change = on_change
        self.connections_opened = 0
        self.connections_open = 0
        self.peak_open_connections = 0
        self.handshakes_rejected = 0
        self.tasks_started = 0
        self.running_tasks = 0
        self.peak_concurrent_tasks = 0
        self.idle_timeout_closes = 0
        self.connections_dropped = 0
        self.client_close_codes: Counter[int] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.records: deque[TaskRecord] = deque(maxlen=MAX_TASK_RECORDS)
        # Running tasks hash their audio only when read (see digest.py): a
        # snapshot asks them, by record identity, for the current value.
        self._live_sha256: dict[int, Callable[[], str]] = {}

    def changed(self) -> None:
        """Tell waiters something changed (after mutating a record in place)."""
        self._on_change()

    def watch_sha256(self, record: TaskRecord, current: Callable[[], str]) -> None:
        """Let snapshots fill ``record.audio_sha256`` from ``current()`` until unwatched."""
        self._live_sha256[id(record)] = current

    def unwatch_sha256(self, record: TaskRecord) -> None:
        self._live_sha256.pop(id(record), None)

    def connection_opened(self) -> int:
        """Count a new connection; return its id (1-based)."""
        self.connections_opened += 1
        self.connections_open += 1
        self.peak_open_connections = max(self.peak_open_connections, self.connections_open)
        self.changed()
        return self.connections_opened

    def connection_closed(self, client_close_code: int | None) -> None:
        self.connections_open -= 1
        if client_close_code is not None:
            self.client_close_codes[client_close_code] += 1
        self.changed()

    def handshake_rejected(self) -> None:
        self.handshakes_rejected += 1
        self.changed()

    def idle_closed(self) -> None:
        self.idle_timeout_closes += 1
        self.changed()

    def dropped(self) -> None:
        self.connections_dropped += 1
        self.changed()

    def task_admitted(self, record: TaskRecord) -> None:
        """Count a task that passed validation and holds a concurrency slot."""
        self.records.append(record)
        self.running_tasks += 1
        self.peak_concurrent_tasks = max(self.peak_concurrent_tasks, self.running_tasks)
        self.changed()

    def task_refused(self, record: TaskRecord) -> None:
        """Record a task that failed before it was admitted (validation, throttling)."""
        self.records.append(record)
        self.outcomes[record.outcome] += 1
        self.changed()

    def task_started(self) -> None:
        self.tasks_started += 1
        self.changed()

    def task_ended(self, record: TaskRecord) -> None:
        """Count the end of an admitted task; ``record.outcome`` is already set."""
        self.running_tasks -= 1
        self.outcomes[record.outcome] += 1
        self.changed()

    def snapshot(self) -> EmulatorStats:
        return EmulatorStats(
            connections_opened=self.connections_opened,
            connections_open=self.connections_open,
            peak_open_connections=self.peak_open_connections,
            handshakes_rejected=self.handshakes_rejected,
            tasks_started=self.tasks_started,
            running_tasks=self.running_tasks,
            peak_concurrent_tasks=self.peak_concurrent_tasks,
            idle_timeout_closes=self.idle_timeout_closes,
            connections_dropped=self.connections_dropped,
            client_close_codes=Counter(self.client_close_codes),
            outcomes=Counter(self.outcomes),
            tasks=[self._copy(r) for r in self.records],
        )

    def _copy(self, record: TaskRecord) -> TaskRecord:
        result = copy.copy(record)
        current = self._live_sha256.get(id(record))
        if current is not None:
            result.audio_sha256 = current()
        return result

"""A lease: one connection lent by the pool to one call, and the task it carries."""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.fleet import FleetSlot
from sidecar.upstream import UpstreamConnection, UpstreamTask

__all__ = ["Lease"]


class Lease:
    """One borrowed connection: how it was obtained, its task, when its call last did something."""

    __slots__ = (
        "borrowed_at",
        "connection",
        "last_activity",
        "on_reclaim",
        "slot",
        "task",
        "wait_ms",
        "warm",
    )

    def __init__(self, connection: UpstreamConnection, *, warm: bool, wait_ms: float) -> None:
        self.connection = connection
        self.warm = warm  # True: it was idle and open already; False: opened for this call
        self.wait_ms = wait_ms
        self.borrowed_at = self.last_activity = time.monotonic()
        self.task: UpstreamTask | None = None  # set once the call's task has started
        self.slot: FleetSlot | None = None  # the fleet quota's, while the task may run
        self.on_reclaim: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Lease {self.connection!r} warm={self.warm} wait_ms={self.wait_ms:.1f}>"

    def touch(self) -> None:
        """Record activity of the call (keeps the lease from being reclaimed)."""
        self.last_activity = time.monotonic()

"""A lease: one connection lent by the pool to one call."""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.upstream import UpstreamConnection

__all__ = ["Lease"]


class Lease:
    """One borrowed connection: how it was obtained and when its call last did something."""

    __slots__ = ("connection", "last_activity", "on_reclaim", "wait_ms", "warm")

    def __init__(self, connection: UpstreamConnection, *, warm: bool, wait_ms: float) -> None:
        self.connection = connection
        self.warm = warm  # True: it was idle and open already; False: opened for this call
        self.wait_ms = wait_ms
        self.last_activity = time.monotonic()
        self.on_reclaim: Callable[[], None] | None = None

    def touch(self) -> None:
        """Record activity of the call (keeps the lease from being reclaimed)."""
        self.last_activity = time.monotonic()

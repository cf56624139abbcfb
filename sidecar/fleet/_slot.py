"""A slot of the fleet quota, held by one call, and the quota's status snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FleetSlot", "FleetStatus"]


class FleetSlot:
    """One slot of the fleet's quota, held while one DashScope task runs.

    ``enforced`` is False for a local slot given while Redis was unreachable
    (policy ``open``); it is registered in Redis when Redis answers again.
    """

    __slots__ = ("_on_release", "acquired_at", "enforced", "id", "released", "wait_s")

    def __init__(
        self,
        slot_id: str,
        on_release: Callable[[FleetSlot], None],
        *,
        enforced: bool,
        wait_s: float,
    ) -> None:
        self._on_release = on_release
        self.id = slot_id
        self.enforced = enforced
        self.wait_s = wait_s
        self.acquired_at = time.monotonic()
        self.released = False

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<FleetSlot {self.id} {state} enforced={self.enforced}>"

    def release(self) -> None:
        """Give the slot back: never blocks, never raises, idempotent.

        Only notes the id; the renewer tells Redis in its next round trip (at once).
        """
        if not self.released:
            self.released = True
            self._on_release(self)


@dataclass(frozen=True)
class FleetStatus:
    """A snapshot of the quota as this process sees it."""

    enforced: bool
    """True while Redis answers: the fleet-wide quota applies to new calls."""
    key: str
    quota: int
    held: int
    """Slots held by this process (running tasks), enforced or not."""
    held_unenforced: int
    """Of ``held``, local slots given while Redis was unreachable."""
    waiting: int
    """Calls of this process waiting for a slot."""
    fleet_in_use: int | None
    """Slots in use fleet-wide at this process's last round trip (None before the first)."""
    fleet_waiting: int | None
    """Tickets queued fleet-wide at the last round trip."""
    reclaimed: int
    """Slots taken back fleet-wide because their lease ran out (a holder died or was cut off)."""
    adopted: int
    """Slots of this process that Redis had lost and this process registered again."""
    redis_errors: int
    last_error: str | None
    """The last Redis error, passwords scrubbed."""
    round_trips: int
    """Redis round trips made by this process (scripts and start-rate hits)."""

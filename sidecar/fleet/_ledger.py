"""What one process holds and owes Redis: the bookkeeping of :class:`FleetQuota`, no I/O.

Three sets of ids, changed in single synchronous steps:

* ``held``: slots this process holds (their tasks run), enforced or not: every one
  is renewed, and registered again if Redis lost it, until it is released;
* ``waiting``: tickets of calls waiting for a slot, each with the future that
  resolves when the ticket is granted (True) or Redis goes down (False);
* ``released``: ids whose slot or ticket Redis must forget (returned slots,
  tickets given up), kept until one ``SYNC`` has carried them, or until one TTL
  has passed: Redis has dropped them by then anyway. Bounded.

:meth:`snapshot` and :meth:`synced` bracket one ``SYNC``: ids released while it
runs stay for the next one.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["Ledger", "Snapshot"]

# Returns owed to Redis while it is unreachable; past this the oldest are dropped
# (they expire in Redis within one TTL anyway).
MAX_RELEASED: Final = 4096


@dataclass(frozen=True)
class Snapshot:
    """The ids one ``SYNC`` carries."""

    released: tuple[str, ...]
    held: tuple[str, ...]
    waiting: tuple[str, ...]


class Ledger:
    """The slots, tickets and returns of one process."""

    def __init__(
        self, ttl_s: float, clock: Callable[[], float], instance: str | None = None
    ) -> None:
        self.instance = instance or secrets.token_hex(6)
        self._ttl_s = ttl_s
        self._clock = clock
        self._numbers = itertools.count(1)
        self.held: dict[str, bool] = {}  # id -> enforced
        self.waiting: dict[str, asyncio.Future[bool]] = {}
        self.released: dict[str, float] = {}  # id -> when (clock)

    def __repr__(self) -> str:
        return (
            f"<Ledger held={len(self.held)} waiting={len(self.waiting)} "
            f"released={len(self.released)}>"
        )

    def new_id(self) -> str:
        """A ticket or slot id unique in the fleet: ``<instance>.<n>`` (the scripts split
        on the last dot to find the instance's wake-up channel)."""
        return f"{self.instance}.{next(self._numbers)}"

    def wait(self, ticket: str) -> asyncio.Future[bool]:
        """Register ``ticket`` as waiting; return the future :meth:`granted` resolves."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting[ticket] = future
        return future

    def granted(self, ticket: str) -> None:
        """Redis granted ``ticket`` (a wake-up message or a ``SYNC`` reply said so)."""
        future = self.waiting.get(ticket)
        if future is not None and not future.done():
            future.set_result(True)

    def fail_waiters(self) -> None:
        """Redis went down: every waiting call decides by the policy."""
        for future in self.waiting.values():
            if not future.done():
                future.set_result(False)

    def hold(self, slot_id: str, *, enforced: bool) -> None:
        """``slot_id`` is held from now on: its ticket no longer waits."""
        self.waiting.pop(slot_id, None)
        self.held[slot_id] = enforced

    def release(self, slot_id: str) -> bool:
        """Give ``slot_id`` back (or give up the ticket): Redis must forget it.

        Returns False if it was neither held nor waiting (already released).
        """
        known = self.held.pop(slot_id, None) is not None
        future = self.waiting.pop(slot_id, None)
        if future is not None:
            known = True
            if not future.done():
                future.cancel()
        if known:
            self._owe(slot_id)
        return known

    def release_all(self) -> None:
        """Release every held slot and give up every waiting ticket (closing)."""
        for slot_id in [*self.held, *self.waiting]:
            self.release(slot_id)

    def snapshot(self, *, full: bool) -> Snapshot:
        """The ids of the next ``SYNC``: the returns owed, plus, when ``full``, every held
        slot and waiting ticket to renew."""
        self._forget_expired()
        if not full:
            return Snapshot(tuple(self.released), (), ())
        waiting = tuple(t for t, f in self.waiting.items() if not f.done())
        return Snapshot(tuple(self.released), tuple(self.held), waiting)

    def synced(self, snapshot: Snapshot, granted: tuple[str, ...]) -> None:
        """A ``SYNC`` of ``snapshot`` succeeded: its returns are done, ``granted`` hold slots."""
        for slot_id in snapshot.released:
            self.released.pop(slot_id, None)
        for ticket in granted:
            self.granted(ticket)

    def _owe(self, slot_id: str) -> None:
        self.released[slot_id] = self._clock()
        while len(self.released) > MAX_RELEASED:
            del self.released[next(iter(self.released))]

    def _forget_expired(self) -> None:
        # Redis took these back by itself after one TTL; telling it again costs for nothing.
        horizon = self._clock() - self._ttl_s
        for slot_id, when in list(self.released.items()):
            if when >= horizon:
                break  # insertion order is release order
            del self.released[slot_id]

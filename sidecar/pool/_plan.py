"""The pool's decisions as pure functions: what to open, close and reclaim now.

The pool hands :func:`plan` a read-only :class:`View` of itself (its idle
connections with their ages, its leases with their last activity, what is in
flight, what the connect gate allows) and applies the :class:`Plan` it gets
back: that is where the I/O happens (closing sockets, starting connects).
Nothing here awaits, reads a clock or touches a socket, and connections are
opaque values, so every sizing and renewal rule is tested with plain values
(``tests/pool/test_plan.py``).

The rules, in the order :func:`plan` applies them:

* a connection the server closed while idle is discarded (``stale``);
* a lease whose call showed no activity for ``lease_stall_s`` is reclaimed;
* the target is ``busy + min_idle + waiters``, capped at ``max_size``: spare
  idle connections beyond it are closed once idle ``shrink_after_s``
  (``shrunk``), oldest first;
* an idle connection due for renewal gets its replacement opened first (make
  before break) while there is room under ``max_size``; otherwise it is closed
  first (``renewed``) and the replenishing below replaces it;
* :func:`replenish`: connects up to the target, one at a time while no connect
  has succeeded yet or the last one failed, none while the backoff runs, and
  only a probe now and then while the key is refused.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sidecar.pool._policy import PoolPolicy

__all__ = ["Busy", "GateView", "Idle", "Plan", "View", "plan", "replenish"]

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Idle(Generic[C]):
    """One idle connection as the plan sees it."""

    connection: C
    reusable: bool  # False: the server closed it meanwhile
    idle_since: float
    renew_at: float
    renewing: bool  # its replacement is being opened


@dataclass(frozen=True, slots=True)
class Busy(Generic[C]):
    """One lent connection as the plan sees it."""

    connection: C
    last_activity: float


@dataclass(frozen=True, slots=True)
class GateView:
    """What the connect gate allows now."""

    key_refused: bool  # only probes may connect
    may_connect: bool  # the backoff after the last failure has passed
    probe_due: bool  # a probe of the refused key may go now
    unproven: bool  # no connect succeeded yet, or the last one failed


@dataclass(frozen=True, slots=True)
class View(Generic[C]):
    """The pool's state at one instant."""

    policy: PoolPolicy
    idle: Sequence[Idle[C]]  # least recently used first
    busy: Sequence[Busy[C]]
    opening: int
    waiters: int
    gate: GateView


@dataclass(frozen=True, slots=True)
class Plan(Generic[C]):
    """What the pool does now."""

    close: tuple[tuple[C, str], ...] = ()  # idle connections to close, with the reason
    reclaim: tuple[C, ...] = ()  # lent connections to take back from their calls
    renew: tuple[C, ...] = ()  # idle connections whose replacements open now
    open: int = 0  # connects to start
    probe: bool = False  # one probe of the refused key


def target(policy: PoolPolicy, busy: int, waiters: int) -> int:
    """How many connections the pool wants: every one in use, the spares, one per waiter."""
    return min(busy + policy.min_idle + waiters, policy.max_size)


def replenish(*, wanted: int, total: int, opening: int, gate: GateView) -> tuple[int, bool]:
    """Return (connects to start, whether to probe) to bring ``total`` up to ``wanted``."""
    if gate.key_refused:
        return 0, opening == 0 and gate.probe_due
    if not gate.may_connect:
        return 0, False
    deficit = wanted - total
    if gate.unproven:
        # A bad key or a dead upstream costs one handshake per backoff step, never a storm.
        deficit = min(deficit, 1 - opening)
    return max(deficit, 0), False


def plan(view: View[C], now: float) -> Plan[C]:
    """Decide the periodic step (see the module docstring for the rules)."""
    policy = view.policy
    close: list[tuple[C, str]] = []
    idle = []
    for entry in view.idle:
        if entry.reusable:
            idle.append(entry)
        else:
            close.append((entry.connection, "stale"))
    reclaim = tuple(b.connection for b in view.busy if now - b.last_activity > policy.lease_stall_s)
    busy = len(view.busy) - len(reclaim)
    wanted = target(policy, busy, view.waiters)

    excess = len(idle) + busy - wanted
    while excess > 0 and idle and now - idle[0].idle_since >= policy.shrink_after_s:
        close.append((idle.pop(0).connection, "shrunk"))
        excess -= 1

    total = len(idle) + busy + view.opening
    renew: list[C] = []
    for entry in idle:
        if entry.renewing or now < entry.renew_at:
            continue
        if total < policy.max_size and not view.gate.key_refused:
            renew.append(entry.connection)  # make before break
            total += 1
        else:
            close.append((entry.connection, "renewed"))  # no room: break, then make
            total -= 1

    opens, probe = replenish(
        wanted=wanted, total=total, opening=view.opening + len(renew), gate=view.gate
    )
    return Plan(tuple(close), reclaim, tuple(renew), opens, probe)

"""The pool's decisions, as pure functions of its state: no socket, no clock, no loop."""

from __future__ import annotations

from typing import Any

from sidecar.pool import PoolPolicy
from sidecar.pool._plan import Busy, GateView, Idle, Plan, View, plan, replenish

OPEN = GateView(key_refused=False, may_connect=True, probe_due=False, unproven=False)


def _policy(**fields: Any) -> PoolPolicy:
    defaults: dict[str, Any] = {
        "min_idle": 2,
        "max_size": 4,
        "shrink_after_s": 15.0,
        "lease_stall_s": 60.0,
    }
    return PoolPolicy(**{**defaults, **fields})


def _idle(name: str, since: float = 0.0, renew_at: float = 1e9, **flags: bool) -> Idle[str]:
    return Idle(name, flags.get("reusable", True), since, renew_at, flags.get("renewing", False))


def _view(
    idle: list[Idle[str]] = (),  # type: ignore[assignment]
    busy: list[Busy[str]] = (),  # type: ignore[assignment]
    *,
    opening: int = 0,
    waiters: int = 0,
    gate: GateView = OPEN,
    **policy: Any,
) -> View[str]:
    return View(_policy(**policy), list(idle), list(busy), opening, waiters, gate)


def test_a_warm_pool_at_its_target_does_nothing() -> None:
    """Two idle spares, nothing busy: the target is met."""
    assert plan(_view([_idle("a"), _idle("b")]), now=1.0) == Plan()


def test_the_target_is_busy_plus_spares_plus_waiters_under_the_cap() -> None:
    """Three busy and a waiter want 3 + 2 + 1 = 6, capped at max_size 4."""
    busy = [Busy(name, 0.0) for name in "xyz"]
    assert plan(_view([], busy, waiters=1), now=1.0).open == 1
    assert plan(_view([], busy[:1]), now=1.0).open == 2


def test_connections_in_flight_count_toward_the_target() -> None:
    assert plan(_view([_idle("a")], opening=1), now=1.0).open == 0


def test_a_closed_idle_socket_is_dropped_as_stale_and_replaced() -> None:
    step = plan(_view([_idle("a", reusable=False), _idle("b")]), now=1.0)
    assert step.close == (("a", "stale"),)
    assert step.open == 1


def test_a_lease_without_activity_past_the_stall_bound_is_reclaimed() -> None:
    busy = [Busy("x", last_activity=0.0), Busy("y", last_activity=50.0)]
    step = plan(_view([_idle("a"), _idle("b")], busy), now=61.0)
    assert step.reclaim == ("x",)
    # y is still busy: the target is 1 + 2, met by y and the two idle.
    assert step.open == 0
    assert plan(_view([_idle("a")], busy), now=61.0).open == 1


def test_spares_beyond_the_target_close_oldest_first_once_idle_long_enough() -> None:
    idle = [_idle("old", since=0.0), _idle("mid", since=10.0), _idle("new", since=20.0)]
    assert plan(_view(idle), now=14.0).close == ()  # none idle 15 s yet
    assert plan(_view(idle), now=15.0).close == (("old", "shrunk"),)
    # Three idle against a target of two: one spare closes, the oldest.
    assert plan(_view(idle), now=26.0).close == (("old", "shrunk"),)


def test_renewal_opens_the_replacement_first_when_there_is_room() -> None:
    step = plan(_view([_idle("a", renew_at=5.0), _idle("b")]), now=5.0)
    assert step.renew == ("a",)
    assert step.close == ()
    assert step.open == 0  # the replacement counts as opening


def test_renewal_without_room_closes_first_and_the_replenish_replaces_it() -> None:
    busy = [Busy("x", 4.0), Busy("y", 4.0)]
    step = plan(_view([_idle("a", renew_at=5.0), _idle("b")], busy), now=5.0)
    assert step.renew == ()
    assert step.close == (("a", "renewed"),)
    assert step.open == 1


def test_a_socket_already_renewing_is_not_renewed_twice() -> None:
    assert plan(_view([_idle("a", renew_at=5.0, renewing=True), _idle("b")]), now=9.0) == Plan()


def test_until_a_connect_succeeds_one_attempt_at_a_time() -> None:
    unproven = GateView(key_refused=False, may_connect=True, probe_due=False, unproven=True)
    assert plan(_view(gate=unproven), now=0.0).open == 1
    assert plan(_view(gate=unproven, opening=1), now=0.0).open == 0


def test_nothing_opens_while_the_backoff_runs() -> None:
    backing_off = GateView(key_refused=False, may_connect=False, probe_due=False, unproven=True)
    assert plan(_view(gate=backing_off), now=0.0).open == 0


def test_a_refused_key_allows_one_probe_when_due_and_no_renewal() -> None:
    refused = GateView(key_refused=True, may_connect=False, probe_due=True, unproven=True)
    step = plan(_view([_idle("a", renew_at=1.0)], gate=refused), now=2.0)
    assert step.probe
    assert step.open == 0
    assert step.renew == ()
    assert step.close == (("a", "renewed"),)
    assert not replenish(wanted=2, total=0, opening=1, gate=refused)[1]  # one probe at a time

"""The Ledger: what one process holds and owes Redis, changed in single steps."""

from __future__ import annotations

from sidecar.fleet._ledger import MAX_RELEASED, Ledger


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_ticket_waits_is_granted_and_held() -> None:
    """wait -> granted resolves the future; hold moves the id from waiting to held."""
    ledger = Ledger(10.0, Clock(), instance="abc")
    ticket = ledger.new_id()
    assert ticket == "abc.1"
    future = ledger.wait(ticket)
    ledger.granted(ticket)
    assert future.result() is True
    ledger.hold(ticket, enforced=True)
    assert repr(ledger) == "<Ledger held=1 waiting=0 released=0>"


async def test_release_is_owed_once_and_cleared_by_a_sync() -> None:
    """A release is owed until a SYNC carries it; releasing twice owes it once."""
    ledger = Ledger(10.0, Clock())
    slot = ledger.new_id()
    ledger.hold(slot, enforced=True)
    assert ledger.release(slot) is True
    assert ledger.release(slot) is False
    snapshot = ledger.snapshot(full=False)
    assert snapshot.released == (slot,)
    assert snapshot.held == ()
    late = ledger.new_id()
    ledger.hold(late, enforced=False)
    ledger.release(late)  # released while the SYNC runs: stays for the next one
    ledger.synced(snapshot, granted=())
    assert tuple(ledger.released) == (late,)


async def test_giving_up_a_ticket_cancels_its_wait_and_owes_it() -> None:
    """A waiter that gives up is no longer waiting and Redis must forget its ticket."""
    ledger = Ledger(10.0, Clock())
    ticket = ledger.new_id()
    future = ledger.wait(ticket)
    assert ledger.release(ticket)
    assert future.cancelled()
    assert ledger.snapshot(full=True).released == (ticket,)
    ledger.granted(ticket)  # a late grant message: ignored


async def test_redis_down_fails_waiters_and_old_debts_are_forgotten() -> None:
    """fail_waiters resolves False; returns older than one TTL are dropped (Redis expired
    them); the debt is bounded."""
    clock = Clock()
    ledger = Ledger(10.0, clock)
    future = ledger.wait(ledger.new_id())
    ledger.fail_waiters()
    assert future.result() is False
    old = ledger.new_id()
    ledger.hold(old, enforced=True)
    ledger.release(old)
    clock.now += 11
    assert ledger.snapshot(full=False).released == ()
    for _ in range(MAX_RELEASED + 10):
        slot = ledger.new_id()
        ledger.hold(slot, enforced=False)
        ledger.release(slot)
    assert len(ledger.released) == MAX_RELEASED

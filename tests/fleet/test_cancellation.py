"""An acquire cancelled at any await point leaks nothing: no slot, no ticket, here or in Redis.

Each sweep cancels the same acquire after 0, 1, 2, ... event-loop steps, so the
cancellation lands before the script is sent, while it is in flight (the
script may have run in Redis: queued the ticket or granted it), while the call
waits, and after the grant; the sweep must reach the acquire's end, or it did
not cover every await.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from sidecar.fleet import FleetQuota, FleetSlot
from tests.fleet.support import MakeQuota, assert_settles
from tests.helpers import eventually
from tests.timing import scaled

_MAX_STEPS = 200


async def _cancel_after(quota: FleetQuota, steps: int, timeout_s: float) -> FleetSlot | None:
    """Start ``quota.acquire``, cancel it after ``steps`` loop steps; return its slot if it
    finished first (then released by the caller)."""
    task = asyncio.create_task(quota.acquire(timeout_s))
    for _ in range(steps):
        await asyncio.sleep(0)
    if task.done():
        return task.result()
    task.cancel()
    try:
        # A cancelled acquire ends promptly: a cancellation swallowed on the way (see
        # sidecar.fleet._link.keep_cancels) would let it wait on to its deadline.
        async with asyncio.timeout(scaled(1)):
            return await task
    except asyncio.CancelledError:
        return None


async def test_cancelled_at_every_step_with_a_free_slot(
    make_quota: MakeQuota, redis: Redis
) -> None:
    """Free slots: cancelling anywhere between the call and the grant leaves no trace."""
    quota = await make_quota(quota=2)
    cancelled = completed = 0
    for steps in range(_MAX_STEPS):
        slot = await _cancel_after(quota, steps, scaled(5))
        if slot is None:
            cancelled += 1
        else:
            completed += 1
            slot.release()
        await assert_settles(redis, quota)
        if completed >= 3:
            break
    assert cancelled > 0, "the sweep never cancelled an acquire"
    assert completed >= 3, f"no acquire finished within {_MAX_STEPS} loop steps"
    # Nothing was lost on the way: the whole quota is there to take.
    slots = [await quota.acquire(scaled(1)) for _ in range(2)]
    assert all(slot.enforced for slot in slots)


async def test_cancelled_at_every_step_while_waiting(make_quota: MakeQuota, redis: Redis) -> None:
    """Quota full: a waiter cancelled anywhere leaves no ticket ahead of later waiters."""
    holder = await make_quota(quota=1)
    waiter = await make_quota(quota=1)
    held = await holder.acquire(scaled(1))
    for steps in range(0, 60, 3):
        assert await _cancel_after(waiter, steps, scaled(5)) is None
        await assert_settles(redis, holder, waiter, held=1)
    # The cancelled waiters are gone: the next waiter is first in line.
    late = asyncio.create_task(waiter.acquire(scaled(5)))
    await asyncio.sleep(0.05)
    held.release()
    slot = await asyncio.wait_for(late, scaled(2))
    assert slot.enforced
    slot.release()
    await assert_settles(redis, holder, waiter)


async def test_cancelled_as_the_slot_is_handed_over(make_quota: MakeQuota, redis: Redis) -> None:
    """A waiter cancelled in the steps around its grant: the slot is passed on, not lost."""
    holder = await make_quota(quota=1)
    waiter = await make_quota(quota=1)
    outcomes: set[str] = set()
    # Loop turns first (the cancel lands before, during or after the grant's round
    # trip), then real pauses, so the grant surely wins a few times even on a busy
    # machine where a round trip outlasts forty turns.
    delays = [(steps, 0.0) for steps in range(40)] + [(0, ms / 1000) for ms in (1, 2, 5, 20)]
    for steps, pause in delays:
        held = await holder.acquire(scaled(1))
        task = asyncio.create_task(waiter.acquire(scaled(5)))
        await eventually(lambda: waiter.status().fleet_waiting == 1, what="queued in Redis")
        held.release()
        for _ in range(steps):
            await asyncio.sleep(0)
        if pause:
            await asyncio.sleep(scaled(pause))
        task.cancel()
        try:
            (await task).release()
            outcomes.add("granted")
        except asyncio.CancelledError:
            outcomes.add("cancelled")
        await assert_settles(redis, holder, waiter)
        if outcomes == {"granted", "cancelled"} and steps > 20:
            break  # both seen, and the early turns covered
    assert outcomes == {"granted", "cancelled"}, outcomes


async def test_cancelled_while_waiting_for_the_start_rate(
    make_quota: MakeQuota, redis: Redis
) -> None:
    """Start rate spent: a call cancelled while it waits gives its slot back."""
    quota = await make_quota(quota=4, start_rate=1 / 60)
    first = await quota.acquire(scaled(1))  # takes the only start in a minute
    for steps in range(0, 30, 2):
        # A deadline past the window's end: the call waits (a nearer one fails at once).
        assert await _cancel_after(quota, steps, 120) is None
        await assert_settles(redis, quota, held=1)
    first.release()
    await assert_settles(redis, quota)


async def test_cancelled_by_the_callers_deadline(make_quota: MakeQuota, redis: Redis) -> None:
    """``asyncio.timeout`` around acquire (a gRPC deadline) cancels it: nothing leaks."""
    holder = await make_quota(quota=1)
    waiter = await make_quota(quota=1)
    held = await holder.acquire(scaled(1))
    for delay_ms in (0, 1, 2, 5, 10, 20):
        try:
            async with asyncio.timeout(delay_ms / 1000):
                await waiter.acquire(scaled(5))
        except TimeoutError:
            pass
        await assert_settles(redis, holder, waiter, held=1)
    held.release()
    await assert_settles(redis, holder, waiter)

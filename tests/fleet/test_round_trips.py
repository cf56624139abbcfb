"""Redis round trips per call, counted by the server: one to borrow, at most one to return.

Printed with ``-s`` (docs/fleet-quota.md quotes them); the assertions only bound
the counts, never a time.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from sidecar.fleet import FleetQuota
from tests.fleet.support import MakeQuota
from tests.timing import scaled


async def _scripts_run(redis: Redis) -> int:
    """EVAL/EVALSHA calls the server has run: one per script round trip (commands a script
    runs inside are counted under their own names)."""
    stats = await redis.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha")
    )


async def _warm_up(quotas: list[FleetQuota]) -> None:
    """One call each first: the first use of a script loads it (EVALSHA, NOSCRIPT, SCRIPT
    LOAD, EVALSHA), and the listener asks for a full SYNC once it has subscribed."""
    for quota in quotas:
        (await quota.acquire(scaled(1))).release()
    await asyncio.sleep(0.1)


async def _renewals_possible(quotas: list[FleetQuota], seconds: float) -> int:
    """Renewal SYNCs the quotas may have made in ``seconds`` (one per renew interval, plus the
    one in flight)."""
    return sum(int(seconds / q.settings.renew_interval_s) + 1 for q in quotas)


async def test_one_round_trip_to_borrow_one_to_return(make_quota: MakeQuota, redis: Redis) -> None:
    """Uncontended: ACQUIRE to borrow, one SYNC to return."""
    quota = await make_quota(quota=2)
    calls = 200
    await _warm_up([quota])
    before, started = await _scripts_run(redis), time.monotonic()
    acquiring = 0.0
    for _ in range(calls):
        t0 = time.monotonic()
        slot = await quota.acquire(scaled(1))
        acquiring += time.monotonic() - t0
        slot.release()
        await asyncio.sleep(0.001)  # let the renewer send this return on its own
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.05)
    scripts = await _scripts_run(redis) - before
    print(  # noqa: T201 - the measurement, shown with -s
        f"\nuncontended: {scripts / calls:.2f} script round trips per call "
        f"(acquire {acquiring / calls * 1000:.2f} ms on loopback)"
    )
    assert scripts <= 2 * calls + await _renewals_possible([quota], elapsed)


async def test_waiting_costs_no_polling(make_quota: MakeQuota, redis: Redis) -> None:
    """Contended (quota 1, sixteen callers on two sidecars): still about two per call, since
    grants are published, not polled for; returns under load share one SYNC."""
    quotas = [await make_quota(quota=1), await make_quota(quota=1)]
    calls = 0

    async def caller(quota: FleetQuota) -> None:
        nonlocal calls
        for _ in range(10):
            slot = await quota.acquire(scaled(30))
            await asyncio.sleep(0.002)
            slot.release()
            calls += 1

    await _warm_up(quotas)
    before, started = await _scripts_run(redis), time.monotonic()
    await asyncio.gather(*(caller(q) for q in quotas for _ in range(8)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.05)
    scripts = await _scripts_run(redis) - before
    local = sum(q.status().round_trips for q in quotas)
    print(  # noqa: T201 - the measurement, shown with -s
        f"\ncontended: {scripts / calls:.2f} script round trips per call over {calls} calls "
        f"in {elapsed:.2f}s (the quotas counted {local} in all since they started)"
    )
    assert scripts <= 2 * calls + await _renewals_possible(quotas, elapsed) * 2


async def test_the_start_rate_costs_one_more(make_quota: MakeQuota, redis: Redis) -> None:
    """With a start rate: one more round trip per borrow (the moving window's hit)."""
    quota = await make_quota(quota=2, start_rate=10_000.0)
    calls = 100
    await _warm_up([quota])
    before, started = await _scripts_run(redis), time.monotonic()
    for _ in range(calls):
        slot = await quota.acquire(scaled(1))
        slot.release()
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.05)
    scripts = await _scripts_run(redis) - before
    print(  # noqa: T201 - the measurement, shown with -s
        f"\nwith a start rate: {scripts / calls:.2f} script round trips per call"
    )
    assert scripts <= 3 * calls + await _renewals_possible([quota], elapsed)

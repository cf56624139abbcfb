"""The fleet-wide start rate spaces task starts, across sidecars."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from sidecar.fleet import FleetExhausted, FleetQuota
from sidecar.fleet._rate import window_of
from tests.fleet.support import MakeQuota, assert_settles
from tests.timing import scaled


async def test_starts_are_spaced_across_sidecars(make_quota: MakeQuota, redis: Redis) -> None:
    """4 starts per second shared by two sidecars: 12 starts take at least two more seconds,
    and no four-plus-one fall within one second."""
    a, b = await make_quota(quota=20, start_rate=4.0), await make_quota(quota=20, start_rate=4.0)
    starts: list[float] = []

    async def start(quota: FleetQuota) -> None:
        slot = await quota.acquire(scaled(20))
        starts.append(time.monotonic())
        slot.release()

    await asyncio.gather(*(start(q) for q in (a, b) for _ in range(6)))
    starts.sort()
    gaps = [later - earlier for earlier, later in zip(starts, starts[4:], strict=False)]
    print(  # noqa: T201 - the measurement, shown with -s
        f"\nstarts at {[round(t - starts[0], 2) for t in starts]}"
    )
    # Each time is taken when acquire returned, a little after the start was counted; a
    # busy machine delays some returns more than others, hence the (scaled) margin.
    # Without the rate every gap would be about zero.
    margin = scaled(0.1)
    assert min(gaps) >= 1.0 - margin
    assert starts[-1] - starts[0] >= 2.0 - margin
    await assert_settles(redis, a, b)


async def test_a_deadline_before_the_next_start_fails_at_once(
    make_quota: MakeQuota, redis: Redis
) -> None:
    """Rate spent and the deadline too near: FleetExhausted now, with the wait as the hint,
    and the slot given back."""
    quota = await make_quota(quota=5, start_rate=1 / 30)
    first = await quota.acquire(scaled(1))
    started = time.monotonic()
    with pytest.raises(FleetExhausted, match="start rate") as raised:
        await quota.acquire(scaled(2))
    assert time.monotonic() - started < scaled(1)
    assert 25 < raised.value.retry_after_s <= 30
    await assert_settles(redis, quota, held=1)
    first.release()


async def test_no_time_left_is_one_try_not_a_refusal(make_quota: MakeQuota, redis: Redis) -> None:
    """acquire(0), as the pool calls it when the borrow used up the call's time: a free
    slot and an unspent rate are granted; a spent rate is refused at once, with its wait."""
    quota = await make_quota(quota=5, start_rate=1 / 30)
    slot = await quota.acquire(0.0)
    with pytest.raises(FleetExhausted, match="start rate") as raised:
        await quota.acquire(0.0)
    assert 25 < raised.value.retry_after_s <= 30
    await assert_settles(redis, quota, held=1)
    slot.release()


@pytest.mark.parametrize(
    ("rate", "window"),
    [(5.0, (5, 1)), (2.5, (5, 2)), (0.2, (1, 5)), (1 / 60, (1, 60)), (1e-6, (1, 3600))],
)
def test_a_rate_becomes_whole_starts_per_whole_seconds(
    rate: float, window: tuple[int, int]
) -> None:
    """limits counts whole seconds: a rate becomes the smallest whole window."""
    assert window_of(rate) == window

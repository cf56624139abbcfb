"""Helpers of the fleet quota tests: settings, a look at the Redis keys, the settled state."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from sidecar.fleet import FleetQuota, FleetSettings
from tests.timing import scaled

__all__ = ["MakeQuota", "assert_settles", "fleet_settings", "redis_sets"]

MakeQuota = Callable[..., Awaitable[FleetQuota]]


def fleet_settings(url: str, **overrides: Any) -> FleetSettings:
    """Test settings: quota 2, a short lease (scaled), a short Redis timeout (scaled)."""
    base = FleetSettings(
        redis_url=url,
        quota=2,
        key="test",
        lease_ttl_s=scaled(2.0),
        redis_timeout_s=scaled(0.2),
    )
    return dataclasses.replace(base, **overrides)


async def redis_sets(redis: Redis, key: str = "test") -> dict[str, int]:
    """The sizes of one quota's sets in Redis: slots, queue, tickets."""
    base = f"cosyvoice:fleet:{{{key}}}"
    return {
        name: int(await redis.zcard(f"{base}:{name}")) for name in ("slots", "queue", "tickets")
    }


async def assert_settles(redis: Redis, *quotas: FleetQuota, held: int = 0) -> None:
    """Nothing waits anywhere, and Redis counts exactly the ``held`` slots the quotas hold.

    The invariant after every cancellation, timeout and failure: no slot leaked,
    no ticket left in the queue to block others.
    """
    sets: dict[str, int] = {}

    async def poll() -> None:
        while True:
            sets.update(await redis_sets(redis))
            local_held = sum(q.status().held for q in quotas)
            local_waiting = sum(q.status().waiting for q in quotas)
            if (
                sets == {"slots": held, "queue": 0, "tickets": 0}
                and local_held == held
                and local_waiting == 0
            ):
                return
            await asyncio.sleep(0.01)

    try:
        async with asyncio.timeout(scaled(5)):
            await poll()
    except TimeoutError:
        raise AssertionError(f"not settled: redis {sets}, quotas {quotas}") from None

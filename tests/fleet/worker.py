"""A sidecar stand-in in its own process: a FleetQuota and callers, driven by the tests.

``python -m tests.fleet.worker hold URL QUOTA TTL COUNT``: take COUNT slots, print
``held COUNT``, then keep them (renewed) until killed, at most two minutes.

``python -m tests.fleet.worker loop URL QUOTA TTL CALLERS SECONDS``: CALLERS callers
take a slot, count themselves in a Redis counter shared by every process (its
value is how many tasks run fleet-wide), hold it 10 ms and give it back, for
SECONDS; print one JSON line: calls made and the highest count seen.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from redis.asyncio import Redis

from sidecar.fleet import FleetQuota, FleetSettings

RUNNING_KEY = "test:running"


def _settings(url: str, quota: str, ttl: str) -> FleetSettings:
    return FleetSettings(
        redis_url=url, quota=int(quota), key="test", lease_ttl_s=float(ttl), redis_timeout_s=0.5
    )


async def hold(url: str, quota: str, ttl: str, count: str) -> None:
    fleet = FleetQuota(_settings(url, quota, ttl))
    await fleet.start()
    slots = [await fleet.acquire(10) for _ in range(int(count))]
    assert all(slot.enforced for slot in slots)
    print(f"held {len(slots)}", flush=True)  # noqa: T201 - the test reads it
    await asyncio.sleep(120)  # the test kills this process long before


async def loop(url: str, quota: str, ttl: str, callers: str, seconds: str) -> None:
    fleet = FleetQuota(_settings(url, quota, ttl))
    await fleet.start()
    counter = Redis.from_url(url)
    stop = time.monotonic() + float(seconds)
    calls = peak = 0

    async def caller() -> None:
        nonlocal calls, peak
        while time.monotonic() < stop:
            slot = await fleet.acquire(30)
            try:
                peak = max(peak, int(await counter.incr(RUNNING_KEY)))
                await asyncio.sleep(0.01)
                await counter.decr(RUNNING_KEY)
            finally:
                slot.release()
            calls += 1

    await asyncio.gather(*(caller() for _ in range(int(callers))))
    await fleet.aclose()
    await counter.aclose()
    print(json.dumps({"calls": calls, "peak": peak}), flush=True)  # noqa: T201


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    asyncio.run(hold(*args) if mode == "hold" else loop(*args))

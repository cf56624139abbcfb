"""Sidecars in separate processes share one quota; a killed one's slots come back in one TTL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sidecar.fleet import FleetExhausted
from tests.fleet.redis_server import RedisServer
from tests.fleet.support import MakeQuota, assert_settles
from tests.timing import scaled

_REPO = Path(__file__).resolve().parents[2]


async def _worker(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fleet.worker",
        *args,
        cwd=_REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )


async def _line(proc: asyncio.subprocess.Process, timeout: float) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(scaled(timeout)):
        line = await proc.stdout.readline()
    assert line, f"worker exited ({await proc.wait()}) without output"
    return line.decode().strip()


async def test_processes_never_hold_more_than_the_quota(redis_server: RedisServer) -> None:
    """Three processes, four callers each, quota 3: never more than 3 tasks run fleet-wide."""
    ttl, seconds = str(scaled(3.0)), str(scaled(1.5))
    procs = [await _worker("loop", redis_server.url, "3", ttl, "4", seconds) for _ in range(3)]
    try:
        results = [json.loads(await _line(proc, 30)) for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    print(  # noqa: T201 - the measurement, shown with -s
        f"\nper process: {results}"
    )
    assert all(result["calls"] > 0 for result in results)
    assert max(result["peak"] for result in results) == 3


async def test_a_killed_sidecars_slots_come_back_within_the_ttl(
    redis_server: RedisServer, make_quota: MakeQuota, redis: Redis
) -> None:
    """SIGKILL while holding the whole quota: the others get all of it back within one TTL."""
    ttl = scaled(2.0)
    proc = await _worker("hold", redis_server.url, "3", str(ttl), "3")
    try:
        assert await _line(proc, 15) == "held 3"
        quota = await make_quota(quota=3, lease_ttl_s=ttl)
        with pytest.raises(FleetExhausted):
            await quota.acquire(0.1)  # the process holds them all
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        killed = time.monotonic()
        slots = await asyncio.gather(*(quota.acquire(ttl * 2) for _ in range(3)))
        back_after = time.monotonic() - killed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    print(  # noqa: T201 - the measurement, shown with -s
        f"\nquota back {back_after:.2f}s after SIGKILL (lease TTL {ttl:g}s)"
    )
    # Its last renewal was at most a third of the TTL before the kill.
    assert back_after <= ttl + scaled(0.2)
    assert quota.status().reclaimed >= 3
    for slot in slots:
        slot.release()
    await assert_settles(redis, quota)

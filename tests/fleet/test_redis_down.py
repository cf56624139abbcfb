"""Redis stopped and restarted under a running quota: the policies, and recovery in place."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sidecar.fleet import FleetExhausted, FleetQuota, FleetUnavailable
from tests.fleet.redis_server import RedisServer
from tests.fleet.support import MakeQuota, assert_settles, fleet_settings, redis_sets
from tests.fleet.tls import make_server_tls
from tests.helpers import eventually, require_executable
from tests.timing import scaled


async def test_fail_open_grants_local_slots_and_resumes_after_a_restart(
    make_quota: MakeQuota, redis_server: RedisServer, redis: Redis
) -> None:
    """open: unenforced slots while Redis is down; once it is back (empty), the slots held
    meanwhile are registered and the quota applies again, without a new FleetQuota."""
    quota = await make_quota(quota=2, on_redis_down="open")
    before = await quota.acquire(scaled(1))
    assert before.enforced
    await redis_server.stop()

    during = await quota.acquire(scaled(1))
    assert not during.enforced
    started = time.monotonic()
    also = await quota.acquire(scaled(1))  # no wait on Redis once it is known down
    assert not also.enforced
    assert time.monotonic() - started < scaled(0.1)
    status = quota.status()
    assert not status.enforced
    assert (status.held, status.held_unenforced) == (3, 2)
    assert status.redis_errors >= 1
    assert status.last_error
    assert "NOT-enforced" in repr(quota)
    also.release()  # returned while Redis is down: nothing owed that matters

    await redis_server.start()
    await eventually(lambda: quota.status().enforced, timeout=5, what=repr(quota))
    # The restarted Redis had lost everything: both running tasks were registered again.
    await eventually(lambda: quota.status().adopted == 2, what=repr(quota))
    assert (await redis_sets(redis))["slots"] == 2
    with pytest.raises(FleetExhausted):
        await quota.acquire(0.1)  # at the quota: the fleet counts the tasks that still run
    before.release()
    during.release()
    after = await quota.acquire(scaled(1))
    assert after.enforced
    after.release()
    await assert_settles(redis, quota)


async def test_fail_closed_raises_unavailable_and_resumes_after_a_restart(
    make_quota: MakeQuota, redis_server: RedisServer, redis: Redis
) -> None:
    """closed: FleetUnavailable while Redis is down, slots again once it answers."""
    quota = await make_quota(quota=2, on_redis_down="closed")
    (await quota.acquire(scaled(1))).release()
    await redis_server.stop()
    with pytest.raises(FleetUnavailable, match="Redis unreachable"):
        await quota.acquire(scaled(1))
    with pytest.raises(FleetUnavailable):
        await quota.acquire(scaled(1))
    assert not quota.status().enforced
    await redis_server.start()
    await eventually(lambda: quota.status().enforced, timeout=5, what=repr(quota))
    slot = await quota.acquire(scaled(1))
    assert slot.enforced
    slot.release()
    await assert_settles(redis, quota)


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_a_waiting_call_follows_the_policy_when_redis_stops(
    make_quota: MakeQuota, redis_server: RedisServer, policy: str
) -> None:
    """A call waiting for a slot when Redis goes away is not left waiting to its deadline."""
    holder = await make_quota(quota=1)
    waiter = await make_quota(quota=1, on_redis_down=policy)
    held = await holder.acquire(scaled(1))
    task = asyncio.create_task(waiter.acquire(scaled(30)))
    await eventually(lambda: waiter.status().fleet_waiting == 1)
    await redis_server.stop()
    async with asyncio.timeout(scaled(5)):
        if policy == "open":
            slot = await task
            assert not slot.enforced
            slot.release()
        else:
            with pytest.raises(FleetUnavailable):
                await task
    held.release()


async def test_start_without_redis_then_redis_comes(redis_server: RedisServer) -> None:
    """Redis down at start: start() does not fail; the quota is enforced once Redis answers."""
    await redis_server.stop()
    quota = FleetQuota(fleet_settings(redis_server.url, quota=1))
    await quota.start()
    try:
        assert not quota.status().enforced
        local = await quota.acquire(scaled(1))
        assert not local.enforced
        await redis_server.start()
        await eventually(lambda: quota.status().enforced, timeout=5, what=repr(quota))
        assert quota.status().adopted == 1
        local.release()
        slot = await quota.acquire(scaled(1))
        assert slot.enforced
        slot.release()
    finally:
        await quota.aclose()


async def test_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    """A password in the URL stays out of repr, status, errors and logs, right or wrong."""
    server = RedisServer(require_executable("redis-server"), password="s3cret-pw")
    await server.start()
    caplog.set_level(logging.DEBUG, logger="sidecar.fleet")
    quotas: list[FleetQuota] = []
    try:
        good = FleetQuota(fleet_settings(server.url, quota=1))
        bad_url = server.url.replace("s3cret-pw", "wrong-pw-7")
        bad = FleetQuota(fleet_settings(bad_url, quota=1, on_redis_down="closed"))
        quotas += [good, bad]
        for quota in quotas:
            await quota.start()
        slot = await good.acquire(scaled(1))
        assert slot.enforced
        slot.release()
        with pytest.raises(FleetUnavailable) as raised:
            await bad.acquire(scaled(1))
        status = bad.status()
        assert status.last_error
        shown = " ".join(
            [str(raised.value), repr(status), repr(bad), repr(bad.settings), caplog.text]
        )
        for secret in ("s3cret-pw", "wrong-pw-7"):
            assert secret not in shown
            assert secret not in repr(good.settings)
        assert ":***@127.0.0.1" in repr(bad.settings)
    finally:
        for quota in quotas:
            await quota.aclose()
        await server.close()


async def test_redis_over_tls(tmp_path: Path) -> None:
    """rediss:// with the CA in the URL's query: slots are taken and returned over TLS."""
    server = RedisServer(require_executable("redis-server"), tls=make_server_tls(tmp_path))
    await server.start()
    quota = FleetQuota(fleet_settings(server.url, quota=1))
    try:
        await quota.start()
        slot = await quota.acquire(scaled(1))
        assert slot.enforced
        assert quota.status().enforced
        with pytest.raises(FleetExhausted):
            await quota.acquire(0)
        slot.release()
        again = await quota.acquire(scaled(1))
        assert again.enforced
        again.release()
    finally:
        await quota.aclose()
        await server.close()

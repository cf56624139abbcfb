"""The fleet quota end to end: sidecars sharing one DashScope quota through a real Redis.

The emulator plays the account: ``max_concurrent_tasks`` is its account-wide
limit, beyond which it answers ``Throttling.RateQuota`` like DashScope.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
import pytest
from cosyvoice.sidecar.v1 import status_pb2, status_pb2_grpc
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.emulator import Emulator
from sidecar.fleet import FleetSettings
from sidecar.server import SidecarServer
from tests.conftest import TEST_KEY, StartSidecar
from tests.fleet.redis_server import RedisServer
from tests.helpers import eventually, sha256, task_record
from tests.processes import Process
from tests.timing import scaled

QUOTA = 10
TEXT = "Hello from the fleet. A second sentence, to take a little while."


@dataclasses.dataclass
class Tally:
    completed: int = 0
    exhausted: int = 0  # RESOURCE_EXHAUSTED with a RetryInfo
    other: list[str] = dataclasses.field(default_factory=list)


async def _callers(
    emulator: Emulator, addresses: list[str], callers: int, calls_each: int
) -> Tally:
    """``callers`` concurrent callers spread over the sidecars, each making calls in a row."""
    tally = Tally()
    clients = [AsyncSynthesizerClient(a) for a in addresses]

    async def caller(index: int) -> None:
        client = clients[index % len(clients)]
        for _ in range(calls_each):
            try:
                result = await client.synthesize(TEXT, timeout=scaled(30))
            except grpc.aio.AioRpcError as exc:
                status = rpc_status.from_call(exc)  # type: ignore[arg-type]
                retry = error_details_pb2.RetryInfo()
                has_retry = status is not None and any(d.Unpack(retry) for d in status.details)
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and has_retry:
                    tally.exhausted += 1
                else:
                    tally.other.append(f"{exc.code().name}: {exc.details()}")
                continue
            record = task_record(emulator, result.started.task_id)
            assert sha256(result.audio) == record.audio_sha256, "audio not byte-exact"
            tally.completed += 1

    try:
        await asyncio.gather(*(caller(i) for i in range(callers)))
    finally:
        for client in clients:
            await client.close()
    return tally


def _throttled(emulator: Emulator) -> int:
    return sum(1 for t in emulator.stats.tasks if (t.error_code or "").startswith("Throttling"))


async def _sidecars(
    stack: AsyncExitStack, emulator: Emulator, count: int, fleet: list[str]
) -> list[tuple[Process, str]]:
    """Start ``count`` sidecar processes on ``emulator``; return each with its address."""
    started = []
    for _ in range(count):
        process = await stack.enter_async_context(
            Process(
                "serve",
                "--listen=127.0.0.1:0",
                f"--upstream-url={emulator.url}",
                "--pool-max-size=10",
                "--pool-min-idle=2",
                f"--acquire-timeout={scaled(10)}",
                *fleet,
                env={"DASHSCOPE_API_KEY": TEST_KEY},
            )
        )
        started.append((process, (await process.expect(r"serving on (\S+)")).group(1)))
    return started


@pytest.fixture
async def account() -> AsyncIterator[Emulator]:
    """An emulator whose account runs at most QUOTA tasks; each takes about half a second."""
    async with Emulator() as emulator:
        emulator.update_knobs(max_concurrent_tasks=QUOTA, realtime_factor=0.1)
        yield emulator


async def test_three_sidecars_share_one_quota_without_throttling(
    account: Emulator, redis_server: RedisServer
) -> None:
    """3 sidecars x pool 10, quota 10, 30 callers: no throttling; without the quota, some.

    Every call completes byte-exact or waits out its bound and gets
    RESOURCE_EXHAUSTED with a RetryInfo, never a throttling error.
    """
    fleet = [f"--fleet-redis-url={redis_server.url}", f"--fleet-quota={QUOTA}"]
    async with AsyncExitStack() as stack:
        addresses = [a for _, a in await _sidecars(stack, account, 3, fleet)]
        shared = await _callers(account, addresses, callers=30, calls_each=3)
    assert shared.other == []
    assert shared.completed + shared.exhausted == 90
    assert shared.completed > 0
    assert _throttled(account) == 0
    assert account.stats.peak_concurrent_tasks <= QUOTA

    before = len(account.stats.tasks)
    async with AsyncExitStack() as stack:
        addresses = [a for _, a in await _sidecars(stack, account, 3, [])]
        alone = await _callers(account, addresses, callers=30, calls_each=3)
    throttled = sum(
        1 for t in account.stats.tasks[before:] if (t.error_code or "").startswith("Throttling")
    )
    logging.getLogger(__name__).info(
        f"fleet quota on: {shared.completed} completed, {shared.exhausted} exhausted, "
        f"0 throttled; off: {alone.completed} completed, {throttled} throttled upstream"
    )
    assert throttled > 0  # what the fleet quota prevents


async def _status(address: str) -> status_pb2.GetStatusResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = status_pb2_grpc.SidecarStatusStub(channel)
        response: status_pb2.GetStatusResponse = await stub.GetStatus(status_pb2.GetStatusRequest())
        return response


def _fleet(redis_server: RedisServer, **overrides: object) -> FleetSettings:
    settings = FleetSettings(
        redis_url=redis_server.url,
        quota=4,
        key="sidecar-test",
        lease_ttl_s=scaled(3.0),
        redis_timeout_s=scaled(0.3),
    )
    return dataclasses.replace(settings, **overrides)  # type: ignore[arg-type]


async def test_redis_down_fails_open_then_enforces_again_without_a_restart(
    start_sidecar: StartSidecar, emulator: Emulator, redis_server: RedisServer
) -> None:
    server: SidecarServer = await start_sidecar(fleet=_fleet(redis_server))
    async with AsyncSynthesizerClient(server.address) as client:
        assert (await client.synthesize("Enforced.")).completed.audio_bytes > 0
        status = await _status(server.address)
        assert status.pool.fleet.enforced
        assert status.pool.fleet.quota == 4
        await redis_server.stop()
        for _ in range(3):  # calls go on, local limits only
            assert (await client.synthesize("Redis is down.")).completed.audio_bytes > 0
        assert not (await _status(server.address)).pool.fleet.enforced
        assert server.pool.status().fleet.redis_errors > 0  # type: ignore[union-attr]
        await redis_server.start()
        await eventually(
            lambda: server.pool.status().fleet.enforced,  # type: ignore[union-attr]
            timeout=10,
            what="enforced again once Redis answers",
        )
        assert (await client.synthesize("Enforced again.")).completed.audio_bytes > 0


async def test_redis_down_fails_closed_with_unavailable_when_told_to(
    start_sidecar: StartSidecar, emulator: Emulator, redis_server: RedisServer
) -> None:
    server: SidecarServer = await start_sidecar(fleet=_fleet(redis_server, on_redis_down="closed"))
    async with AsyncSynthesizerClient(server.address) as client:
        assert (await client.synthesize("Enforced.")).completed.audio_bytes > 0
        await redis_server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.synthesize("Refused.")
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "redis" in (info.value.details() or "").lower()
    # The warm socket was given back unused: nothing leaked, no task started.
    assert server.pool.status().busy == 0


async def test_a_sidecar_killed_while_holding_slots_gives_them_back_within_the_ttl(
    redis_server: RedisServer,
) -> None:
    """SIGKILL of a sidecar running quota-many tasks: the other gets the whole quota again
    within one lease TTL, not never."""
    ttl = scaled(3.0)
    fleet = [
        f"--fleet-redis-url={redis_server.url}",
        "--fleet-quota=2",
        f"--fleet-lease-ttl={ttl}",
    ]
    async with Emulator() as emulator, AsyncExitStack() as stack:
        emulator.update_knobs(realtime_factor=1.0)  # tasks last seconds: slots stay held
        (doomed, doomed_address), (_, survivor_address) = await _sidecars(stack, emulator, 2, fleet)
        async with AsyncSynthesizerClient(doomed_address) as client:
            held = [asyncio.create_task(client.synthesize(TEXT * 4)) for _ in range(2)]
            await eventually(lambda: emulator.stats.running_tasks == 2, what="2 slots held")
            assert doomed.proc is not None
            doomed.proc.kill()  # SIGKILL: no chance to give its slots back
            await asyncio.gather(*held, return_exceptions=True)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        async with AsyncSynthesizerClient(survivor_address) as client:
            streams = [await client.open_stream() for _ in range(2)]
            for stream in streams:
                await stream.send_text(TEXT)
                await stream.finish()
            started = [await anext(aiter(stream)) for stream in streams]
            waited = loop.time() - killed_at
            for stream in streams:
                async for _ in stream:
                    pass
    assert all(s.HasField("started") for s in started)
    assert waited < ttl + scaled(2.0), f"the slots came back after {waited:.1f}s (TTL {ttl}s)"

"""The pool's policies against the emulator: renewal, bursts, restarts, bad keys, stale sockets."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.config import Secret
from sidecar.emulator import Emulator
from sidecar.server import LIVENESS_SERVICE, SERVICE_NAME
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles, eventually, eventually_async
from tests.proxy import TcpProxy
from tests.test_server import _health
from tests.timing import scaled

SERVING, NOT_SERVING = 1, 2


async def test_idle_connections_are_renewed_before_the_server_closes_them(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Server idle limit 3 s, max_idle_age 2 s, sporadic calls for 12 s: never a cold socket."""
    emulator.update_knobs(idle_timeout_s=scaled(3.0))
    server = await start_sidecar(pool_min_idle=2, pool_max_size=6, pool_max_idle_age_s=scaled(2.0))
    rng = random.Random(7)  # noqa: S311 - test pacing
    loop = asyncio.get_running_loop()
    end = loop.time() + scaled(12)
    calls = 0
    async with AsyncSynthesizerClient(server.address) as client:
        while loop.time() < end:
            result = await client.synthesize("Sporadic call.")
            assert result.started.warm_connection
            calls += 1
            await asyncio.sleep(rng.uniform(0, scaled(2.5)))
    stats = emulator.stats
    assert stats.idle_timeout_closes == 0
    assert server.pool.status().closed_total.get("renewed", 0) > 0
    # target (1 busy + 2 spares) plus at most one renewal per idle socket in flight
    assert stats.peak_open_connections <= 3 + 2
    assert stats.client_close_codes.get(1000, 0) == server.pool.status().closed_total["renewed"]
    assert calls >= 4
    await assert_pool_settles(server, emulator)


async def test_burst_of_three_times_max_size_never_exceeds_the_quota(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """12 simultaneous calls on max_size=4: at most 4 sockets; the rest wait and succeed."""
    server = await start_sidecar(pool_min_idle=1, pool_max_size=4, acquire_timeout_s=scaled(20))
    emulator.update_knobs(realtime_factor=0.5)
    async with AsyncSynthesizerClient(server.address) as client:
        results = await asyncio.gather(*(client.synthesize(f"Burst call {i}.") for i in range(12)))
    assert all(r.completed.audio_bytes > 0 for r in results)
    assert emulator.stats.peak_open_connections <= 4
    assert emulator.stats.peak_concurrent_tasks == 4
    await assert_pool_settles(server, emulator)


async def test_spares_above_the_target_shrink_after_a_quiet_period(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """After a burst, idle sockets beyond busy + min_idle are closed once quiet."""
    server = await start_sidecar(
        pool_min_idle=1,
        pool_max_size=4,
        acquire_timeout_s=scaled(20),
        pool_shrink_after_s=scaled(0.5),
    )
    emulator.update_knobs(realtime_factor=0.2)
    async with AsyncSynthesizerClient(server.address) as client:
        await asyncio.gather(*(client.synthesize(f"Burst {i}.") for i in range(4)))
    assert emulator.stats.peak_open_connections == 4
    await eventually(lambda: emulator.stats.connections_open == 1, timeout=5, what="shrunk to 1")
    assert server.pool.status().closed_total.get("shrunk") == 3


async def test_warm_up_goes_through_the_connect_rate_limiter(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Burst 2 then 5/s: six sockets take about 0.6 s, never all at once."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await start_sidecar(
        pool_min_idle=6, pool_max_size=6, pool_connect_burst=2, pool_connect_rate=5.0
    )
    # The first connect alone, then burst 2, then 5/s for the remaining three.
    assert loop.time() - started >= 0.55
    assert emulator.stats.connections_opened == 6


@pytest.mark.parametrize("follows", [False, True])
async def test_upstream_restart_recovers_and_health_follows(
    start_sidecar: StartSidecar, emulator: Emulator, follows: bool
) -> None:
    """Upstream stopped, then started on the same port: the Synthesizer service follows it.

    The pod's readiness ("") stays SERVING through the outage unless
    --readiness-follows-upstream says it should follow too.
    """
    server = await start_sidecar(pool_min_idle=2, readiness_follows_upstream=follows)
    assert await _health(server.address) == SERVING
    port = emulator.port
    await emulator.aclose()
    await eventually(lambda: not server.pool.ready, what="pool notices the upstream is gone")

    async def synthesizer_down() -> bool:
        return await _health(server.address, SERVICE_NAME) == NOT_SERVING

    await eventually_async(synthesizer_down, what="the Synthesizer health follows")
    assert await _health(server.address) == (NOT_SERVING if follows else SERVING)
    assert await _health(server.address, LIVENESS_SERVICE) == SERVING
    async with Emulator(port=port) as restarted:
        # The backoff is capped at 10 s; recovery comes within one capped pause.
        assert await server.wait_ready(scaled(12))
        assert await _health(server.address, SERVICE_NAME) == SERVING
        assert await _health(server.address) == SERVING
        async with AsyncSynthesizerClient(server.address) as client:
            result = await client.synthesize("Back again.")
        assert result.started.warm_connection
        assert restarted.stats.connections_opened >= 2


async def test_bad_key_stops_connecting_and_a_new_key_file_recovers(
    start_sidecar: StartSidecar, emulator: Emulator, tmp_path: Path
) -> None:
    """A refused key: one attempt, then a probe per 30 s; NOT_SERVING; a new key file recovers.

    Calls meanwhile fail fast with FAILED_PRECONDITION naming the API key.
    """
    emulator.update_knobs(api_keys=frozenset({"sk-good"}))
    key_file = tmp_path / "key"
    key_file.write_text("sk-bad\n")
    server = await start_sidecar(
        wait_ready=False, api_key=Secret("sk-bad"), api_key_file=str(key_file), pool_min_idle=2
    )
    await eventually(lambda: server.pool.status().breaker_open, what="breaker open")
    await asyncio.sleep(scaled(1.5))  # a window in which a storm would show
    assert emulator.stats.handshakes_rejected == 1
    assert await _health(server.address) == NOT_SERVING  # never warmed: not ready
    assert await _health(server.address, SERVICE_NAME) == NOT_SERVING
    assert await _health(server.address, LIVENESS_SERVICE) == SERVING  # no restart for this
    assert "refused the API key" in server.pool.status().last_error
    async with AsyncSynthesizerClient(server.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.synthesize("Hello?")
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "API key" in (info.value.details() or "")
        key_file.write_text("sk-good\n")
        assert await server.wait_ready(scaled(5))
        assert await _health(server.address) == SERVING
        result = await client.synthesize("Hello again.")
    assert result.completed.audio_bytes > 0
    assert emulator.stats.handshakes_rejected == 1


async def test_silently_dropped_idle_socket_is_retried_on_a_fresh_one(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """A pooled socket dead without a sign fails at run-task: the caller still succeeds."""
    async with TcpProxy(emulator.port) as proxy:
        server = await start_sidecar(upstream_url=proxy.url(), pool_min_idle=1, pool_max_size=2)
        proxy.break_on_next_send()
        async with AsyncSynthesizerClient(server.address) as client:
            result = await client.synthesize("Through a dead socket and a fresh one.")
        assert result.completed.audio_bytes > 0
        assert not result.started.warm_connection
        assert server.pool.status().stale_retries == 1
        await eventually(
            lambda: server.pool.status().busy == 0 and server.pool.status().opening == 0,
            what="settled",
        )


async def test_idle_sockets_dropped_by_the_server_are_discarded_before_use(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """The emulator aborts idle sockets; the next call sees only a working socket."""
    server = await start_sidecar(pool_min_idle=2, pool_max_size=4)
    emulator.update_knobs(drop_idle_silently=True, idle_timeout_s=scaled(0.2))
    await eventually(lambda: emulator.stats.connections_dropped >= 2, what="sockets dropped")
    emulator.update_knobs(idle_timeout_s=60.0)
    async with AsyncSynthesizerClient(server.address) as client:
        result = await client.synthesize("After the drop.")
    assert result.completed.audio_bytes > 0
    # Each dropped socket is discarded either idle (stale) or, if the drop was not
    # yet visible when the call borrowed it, at run-task with a transparent retry.
    # The client sees a drop when its event loop reads the reset: soon, not at once.

    def discarded() -> int:
        status = server.pool.status()
        return status.closed_total.get("stale", 0) + status.stale_retries

    await eventually(lambda: discarded() >= 2, what="both dropped sockets discarded")
    await assert_pool_settles(server, emulator)


async def test_stalled_lease_is_reclaimed(start_sidecar: StartSidecar, emulator: Emulator) -> None:
    """A call that does nothing past the lease bound loses its connection; counts stay exact."""
    server = await start_sidecar(
        pool_lease_stall_s=scaled(0.5),
        caller_idle_timeout_s=60.0,
        caller_read_timeout_s=scaled(0.25),
    )
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.collect()  # sends nothing and waits: a stuck caller
    assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert server.pool.status().closed_total.get("reclaimed") == 1
    await assert_pool_settles(server, emulator)

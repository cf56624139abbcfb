"""The pool on its own, against the emulator: counts stay exact whatever callers do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.emulator import Emulator
from sidecar.errors import PoolClosed, PoolExhausted, UpstreamAuthError, UpstreamUnavailable
from sidecar.pool import Lease, Pool, PoolPolicy
from sidecar.upstream import UpstreamConnection, UpstreamTask, open_connection
from tests.conftest import TEST_KEY
from tests.helpers import eventually
from tests.proxy import TcpProxy
from tests.timing import scaled


def _pool(
    emulator: Emulator, *, min_idle: int = 0, max_size: int = 2, key: str = TEST_KEY, **policy: Any
) -> Pool:
    async def connector() -> UpstreamConnection:
        return await open_connection(emulator.url, key, connect_timeout=scaled(2))

    return Pool(
        connector,
        PoolPolicy(min_idle=min_idle, max_size=max_size, acquire_timeout_s=scaled(2), **policy),
    )


@pytest.fixture
async def pool(emulator: Emulator) -> AsyncIterator[Pool]:
    p = _pool(emulator)
    p.start()
    try:
        yield p
    finally:
        await p.aclose()


async def _settled(pool: Pool, emulator: Emulator, idle: int) -> None:
    def check() -> bool:
        s = pool.status()
        return (
            s.busy == 0
            and s.opening == 0
            and s.closing == 0
            and s.idle == idle
            and emulator.stats.connections_open == idle
        )

    await eventually(check, what=f"{pool!r} emulator open={emulator.stats.connections_open}")


async def test_warm_up_opens_min_idle_in_parallel(emulator: Emulator) -> None:
    """min_idle connections open concurrently: total time ~ one handshake, not four."""
    emulator.update_knobs(handshake_delay_s=0.3)
    pool = _pool(emulator, min_idle=4, max_size=4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    pool.start()
    assert await pool.wait_ready(scaled(5))
    assert loop.time() - started < 4 * 0.3
    assert repr(pool) == "<Pool idle=4 busy=0 opening=0 closing=0 waiters=0 max=4>"
    await pool.aclose()
    await eventually(lambda: emulator.stats.connections_open == 0, what="all closed")
    assert emulator.stats.client_close_codes.get(1000) == 4


async def test_release_keeps_only_reusable_connections(pool: Pool, emulator: Emulator) -> None:
    """A connection whose task did not finish is closed on release, never pooled."""
    borrowed = await pool.acquire()
    assert not borrowed.warm
    task = await borrowed.connection.start_task(
        "cosyvoice-v3-flash",
        {"voice": "v", "format": "pcm", "sample_rate": 16000},
        start_timeout=scaled(2),
    )
    task.abandon()  # the caller walked away mid-task
    assert not borrowed.connection.reusable
    pool.release(borrowed.connection)
    await _settled(pool, emulator, idle=0)


async def test_cancel_while_waiting_leaves_no_waiter(pool: Pool, emulator: Emulator) -> None:
    """A caller cancelled in the wait queue is gone from it; the connections are untouched."""
    first = await pool.acquire()
    second = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await eventually(lambda: pool.status().waiters == 1, what="one waiter")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.status().waiters == 0
    pool.release(first.connection)
    pool.release(second.connection)
    await _settled(pool, emulator, idle=2)


async def test_waiter_gets_the_released_connection_fifo(pool: Pool, emulator: Emulator) -> None:
    """Released connections go to waiters in arrival order, without a new socket."""
    a = await pool.acquire()
    b = await pool.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        borrowed = await pool.acquire()
        order.append(n)
        pool.release(borrowed.connection)

    waiters = [asyncio.create_task(wait(n)) for n in range(3)]
    await eventually(lambda: pool.status().waiters == 3, what="three waiters")
    pool.release(a.connection)
    pool.release(b.connection)
    await asyncio.wait_for(asyncio.gather(*waiters), scaled(5))
    assert order == [0, 1, 2]
    assert emulator.stats.connections_opened == 2
    await _settled(pool, emulator, idle=2)


async def test_wait_is_bounded_by_acquire_timeout(pool: Pool, emulator: Emulator) -> None:
    """No connection frees up: PoolExhausted after the bound, not a hang."""
    held = [await pool.acquire(), await pool.acquire()]
    with pytest.raises(PoolExhausted):
        await pool.acquire(timeout=0.1)
    assert pool.status().waiters == 0
    for borrowed in held:
        pool.release(borrowed.connection)
    await _settled(pool, emulator, idle=2)


async def test_cancel_while_connecting_adopts_the_new_socket(emulator: Emulator) -> None:
    """A caller cancelled during the handshake: the socket joins the pool, not leaks."""
    emulator.update_knobs(handshake_delay_s=0.3)
    pool = _pool(emulator)
    pool.start()
    caller = asyncio.create_task(pool.acquire())
    await eventually(lambda: pool.status().opening == 1, what="opening")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await _settled(pool, emulator, idle=1)
    await pool.aclose()
    await eventually(lambda: emulator.stats.connections_open == 0, what="closed")


async def test_stale_idle_connection_is_skipped(pool: Pool, emulator: Emulator) -> None:
    """An idle socket the server closed is discarded at borrow time, without a round trip."""
    borrowed = await pool.acquire()
    pool.release(borrowed.connection)
    emulator.update_knobs(idle_timeout_s=0.05)  # the server closes the idle socket
    await eventually(lambda: borrowed.connection.closed, what="close seen")
    emulator.update_knobs(idle_timeout_s=60.0)
    again = await pool.acquire()
    assert again.connection is not borrowed.connection
    assert not again.warm
    pool.release(again.connection)


async def test_bad_key_fails_the_caller_with_an_auth_error(emulator: Emulator) -> None:
    """A refused key is UpstreamAuthError, and the pool stays below its cap."""
    emulator.update_knobs(api_keys=frozenset({"sk-the-right-one"}))
    pool = _pool(emulator, key="sk-wrong")
    pool.start()
    with pytest.raises(UpstreamAuthError):
        await pool.acquire()
    assert "HTTP 401" in pool.status().last_error
    assert pool.status().busy == 0
    await pool.aclose()


async def test_closed_pool_refuses_and_wakes_waiters(pool: Pool) -> None:
    """Shutdown fails waiting callers with PoolClosed and refuses new ones."""
    held = [await pool.acquire(), await pool.acquire()]
    waiter = asyncio.create_task(pool.acquire())
    await eventually(lambda: pool.status().waiters == 1, what="one waiter")
    await pool.aclose()
    with pytest.raises(PoolClosed):
        await waiter
    with pytest.raises(PoolClosed):
        await pool.acquire()
    assert all(b.connection.closed for b in held)


async def _start(lease: Lease) -> UpstreamTask:
    return await lease.connection.start_task(
        "cosyvoice-v3-flash",
        {"voice": "v", "format": "pcm", "sample_rate": 16000},
        start_timeout=scaled(2),
    )


async def test_the_stale_socket_retry_gets_only_the_time_left(emulator: Emulator) -> None:
    """A borrow that waited, found its socket dead and retries: the retry keeps the bound.

    The caller waits half the acquire timeout for the only connection, which
    the network has dropped; the fresh connect of the retry takes most of a
    whole acquire timeout. The borrow ends at the bound, not a bound later.
    """
    bound = scaled(1.0)
    async with TcpProxy(emulator.port) as proxy:

        async def connector() -> UpstreamConnection:
            return await open_connection(proxy.url(), TEST_KEY, connect_timeout=scaled(5))

        pool = Pool(connector, PoolPolicy(min_idle=0, max_size=1, acquire_timeout_s=bound))
        pool.start()
        try:
            held = await pool.acquire()
            emulator.update_knobs(handshake_delay_s=0.8 * bound)
            proxy.break_on_next_send()  # the next run-task finds the socket dead
            loop = asyncio.get_running_loop()
            loop.call_later(0.5 * bound, pool.release, held.connection)
            started = loop.time()
            with pytest.raises(PoolExhausted):
                async with pool.lease(None, _start):
                    pass
            elapsed = loop.time() - started
            assert pool.status().stale_retries == 1
            assert elapsed < bound + scaled(0.2), f"the borrow took {elapsed:.2f}s"
            await eventually(lambda: pool.status().opening == 0, what="the late connect joined")
        finally:
            await pool.aclose()


class _Unreachable:
    """A TCP listener that counts the connections it accepts and closes each at once."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/api-ws/v1/inference"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.transport.abort()


async def test_callers_make_one_connect_at_a_time_while_the_upstream_is_unreachable() -> None:
    """After a failed connect, callers who find no idle socket add no handshake of their own.

    While the backoff runs they fail at once with UpstreamUnavailable naming
    the last failure (UNAVAILABLE, which callers retry); once it has passed,
    one caller's connect goes through and the others fail while it is under way.
    """
    upstream = _Unreachable()
    async with upstream as url:

        async def connector() -> UpstreamConnection:
            return await open_connection(url, TEST_KEY, connect_timeout=scaled(2))

        window = scaled(1.0)  # the first backoff pause: between window / 2 and window
        policy = PoolPolicy(
            min_idle=0,
            max_size=32,
            acquire_timeout_s=scaled(2),
            backoff_initial_s=window,
            backoff_max_s=window,
        )
        pool = Pool(connector, policy)
        pool.start()
        try:
            with pytest.raises(UpstreamUnavailable):
                await pool.acquire()
            assert upstream.accepted == 1
            for wave in (1, 2):
                if wave == 2:
                    await asyncio.sleep(window)  # the backoff has passed
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*(pool.acquire() for _ in range(20)), return_exceptions=True),
                    scaled(5),
                )
                assert all(isinstance(o, UpstreamUnavailable) for o in outcomes), outcomes
                assert upstream.accepted == wave, f"wave {wave}: {upstream.accepted} connects"
                # Wave 2: one caller made the attempt and got its failure; the rest did not wait.
                refused = [o for o in outcomes if "the upstream is unreachable" in str(o)]
                assert len(refused) == (20 if wave == 1 else 19), outcomes
                assert all("did not receive a valid HTTP response" in str(o) for o in outcomes)
            status = pool.status()
            assert (status.busy, status.opening, status.idle) == (0, 0, 0)
        finally:
            await pool.aclose()


async def test_a_connection_busy_at_shutdown_is_counted_closed_once(
    pool: Pool, emulator: Emulator
) -> None:
    """Shutdown closes a lent connection; its later return does not close (or count) it again."""
    borrowed = await pool.acquire()
    await pool.aclose()
    assert borrowed.connection.closed
    pool.release(borrowed.connection)  # the call ends after the shutdown
    await eventually(lambda: pool.status().closing == 0, what="closes finished")
    assert pool.status().closed_total == {"shutdown": 1}
    assert pool.status().busy == 0


async def test_a_connection_handed_to_a_waiter_as_the_shutdown_begins_is_not_lent(
    pool: Pool, emulator: Emulator
) -> None:
    """Handed over, then the pool closes before the waiter resumes: PoolClosed, counted once."""
    first = await pool.acquire()
    second = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await eventually(lambda: pool.status().waiters == 1, what="one waiter")
    pool.release(first.connection)  # handed to the waiter, which has not resumed yet
    await pool.aclose()
    with pytest.raises(PoolClosed):
        await waiter
    pool.release(second.connection)
    await eventually(lambda: pool.status().closing == 0, what="closes finished")
    assert pool.status().closed_total == {"shutdown": 2}


async def test_a_connection_opened_for_a_caller_as_the_shutdown_begins_is_not_lent(
    emulator: Emulator,
) -> None:
    """The caller's connect ends after the pool closed: PoolClosed, and the socket is closed."""
    emulator.update_knobs(handshake_delay_s=0.3)
    pool = _pool(emulator)
    pool.start()
    caller = asyncio.create_task(pool.acquire())
    await eventually(lambda: pool.status().opening == 1, what="opening")
    await pool.aclose()
    with pytest.raises(PoolClosed):
        await asyncio.wait_for(caller, scaled(5))
    await eventually(lambda: emulator.stats.connections_open == 0, what="closed upstream")
    assert pool.status().closed_total == {"shutdown": 1}


async def test_a_connector_bug_in_a_callers_connect_leaves_the_counts_right(
    emulator: Emulator,
) -> None:
    """An exception outside the upstream's errors reaches the caller; nothing stays 'opening'."""
    broken = True

    async def connector() -> UpstreamConnection:
        if broken:
            raise RuntimeError("a bug in the connector")
        return await open_connection(emulator.url, TEST_KEY, connect_timeout=scaled(2))

    pool = Pool(connector, PoolPolicy(min_idle=0, max_size=1, acquire_timeout_s=scaled(2)))
    pool.start()
    try:
        with pytest.raises(RuntimeError):
            await pool.acquire()
        assert pool.status().opening == 0
        broken = False
        borrowed = await pool.acquire()  # the pool has not shrunk for good
        pool.release(borrowed.connection)
    finally:
        await pool.aclose()

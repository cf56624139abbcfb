"""The pool's parts on their own: the idle stack, the waiters and the connect gate.

The pool's own tests (test_pool.py, test_policies.py) cover them through the
pool, and test_plan.py its decisions; these pin down each part's rules where
they are decided.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.emulator import Emulator
from sidecar.errors import UpstreamAuthError, UpstreamUnavailable
from sidecar.pool import PoolPolicy
from sidecar.pool._gate import ConnectGate
from sidecar.pool._idle import IdleConnections
from sidecar.pool._waiters import Waiters
from sidecar.upstream import UpstreamConnection, open_connection
from tests.conftest import TEST_KEY
from tests.timing import scaled


@pytest.fixture
async def sockets(emulator: Emulator) -> AsyncIterator[list[UpstreamConnection]]:
    opened = [
        await open_connection(emulator.url, TEST_KEY, connect_timeout=scaled(2)) for _ in range(3)
    ]
    try:
        yield opened
    finally:
        for connection in opened:
            await connection.aclose()


def _idle(**policy: Any) -> IdleConnections:
    jitter_free = PoolPolicy(age_jitter=0.0, **policy)
    return IdleConnections(jitter_free, random.Random(7))  # noqa: S311 - not cryptography


# ---------------------------------------------------------------- idle stack


async def test_idle_lends_the_newest_and_lists_the_longest_idle_first(
    sockets: list[UpstreamConnection],
) -> None:
    a, b, c = sockets
    idle = _idle()
    for offset, connection in enumerate(sockets):
        idle.push(connection, now=offset * 10.0)
    assert list(idle) == [a, b, c]
    assert idle.idle_since(b) == 10.0
    assert idle.pop_newest() is c
    assert idle.remove(a) is True
    assert list(idle) == [b]
    assert len(idle) == 1
    assert b in idle
    assert a not in idle
    assert idle.pop_newest() is b
    assert idle.pop_newest() is None


async def test_renewal_is_due_at_the_idle_age_or_the_lifetime_whichever_first(
    sockets: list[UpstreamConnection],
) -> None:
    a, b, _ = sockets
    idle = _idle(max_idle_age_s=10.0, max_lifetime_s=600.0)
    idle.push(a, now=a.opened_at)
    assert idle.renew_at(a) == a.opened_at + 10.0

    short_lived = _idle(max_idle_age_s=100.0, max_lifetime_s=5.0)
    short_lived.push(b, now=b.opened_at + 1.0)
    assert short_lived.renew_at(b) == b.opened_at + 5.0


async def test_a_renewing_socket_that_leaves_idle_is_not_replaced_twice(
    sockets: list[UpstreamConnection],
) -> None:
    a, _, _ = sockets
    idle = _idle(max_idle_age_s=10.0)
    idle.push(a, now=0.0)
    idle.start_renewal(a)
    assert idle.renewing(a)
    assert idle.pop_newest() is a  # borrowed meanwhile
    # The replacement opens: the borrowed socket is no longer idle, so it must stay.
    assert idle.end_renewal(a) is False
    idle.push(a, now=100.0)  # back from its call: a fresh deadline, not renewing
    assert not idle.renewing(a)
    assert idle.renew_at(a) == 110.0
    idle.start_renewal(a)
    assert idle.end_renewal(a) is True
    assert idle.remove(a) is True
    assert idle.remove(a) is False


# ------------------------------------------------------------------- waiters


async def test_waiters_are_served_oldest_first_and_gone_ones_are_skipped(
    sockets: list[UpstreamConnection],
) -> None:
    a, b, _ = sockets
    waiters = Waiters()
    given_back: list[UpstreamConnection] = []
    first = asyncio.create_task(waiters.wait(scaled(5), given_back.append))
    second = asyncio.create_task(waiters.wait(scaled(5), given_back.append))
    third = asyncio.create_task(waiters.wait(scaled(5), given_back.append))
    await asyncio.sleep(0)
    assert len(waiters) == 3
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(waiters) == 2
    assert waiters.hand_over(a) is True
    assert waiters.hand_over(b) is True
    assert await second is a
    assert await third is b
    assert waiters.hand_over(a) is False
    assert len(waiters) == 0
    assert given_back == []


async def test_a_connection_handed_to_a_caller_that_just_gave_up_is_given_back(
    sockets: list[UpstreamConnection],
) -> None:
    a, _, _ = sockets
    waiters = Waiters()
    given_back: list[UpstreamConnection] = []
    waiting = asyncio.create_task(waiters.wait(scaled(5), given_back.append))
    await asyncio.sleep(0)
    assert waiters.hand_over(a) is True
    waiting.cancel()  # in the same step: the caller never sees the connection
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert given_back == [a]


async def test_a_wait_ends_with_a_timeout_or_the_error_given_to_all() -> None:
    waiters = Waiters()
    with pytest.raises(TimeoutError):
        await waiters.wait(0.01, lambda _: None)
    waiting = asyncio.create_task(waiters.wait(scaled(5), lambda _: None))
    await asyncio.sleep(0)
    waiters.fail_all(UpstreamAuthError(401))
    with pytest.raises(UpstreamAuthError):
        await waiting
    assert len(waiters) == 0


# -------------------------------------------------------------- connect gate


def _gate(**policy: Any) -> ConnectGate:
    return ConnectGate(PoolPolicy(**policy), random.Random(7))  # noqa: S311 - not cryptography


def test_a_failed_connect_waits_out_a_backoff_and_a_success_forgets_it() -> None:
    gate = _gate(backoff_initial_s=1.0, backoff_max_s=8.0)
    assert gate.may_connect(0.0)
    gate.failed(UpstreamUnavailable("refused"), now=0.0)
    assert gate.failures == 1
    assert isinstance(gate.last_error, UpstreamUnavailable)
    assert not gate.may_connect(0.49)  # equal jitter: between half the bound and the bound
    assert gate.may_connect(1.0)
    gate.failed(UpstreamUnavailable("refused"), now=10.0)
    assert not gate.may_connect(10.99)  # the bound doubled
    assert gate.may_connect(12.0)
    gate.succeeded()
    assert gate.failures == 0
    assert gate.last_error is None
    assert gate.may_connect(10.0)


def test_a_refused_key_lets_only_probes_through_until_a_connect_works() -> None:
    gate = _gate(auth_probe_interval_s=30.0)
    gate.failed(UpstreamAuthError(401), now=0.0)
    assert gate.key_refused
    assert isinstance(gate.auth_error, UpstreamAuthError)
    assert not gate.may_connect(1000.0)
    assert not gate.probe_due(29.0)
    assert gate.probe_due(30.0)
    gate.probe_started(30.0)
    assert not gate.probe_due(31.0)  # one probe per interval
    gate.key_changed()  # the key file changed: probe at once
    assert gate.probe_due(32.0)
    gate.succeeded()
    assert not gate.key_refused
    assert gate.auth_error is None
    assert gate.may_connect(32.0)


def test_connects_are_paced_by_the_token_bucket() -> None:
    gate = _gate(connect_burst=2, connect_rate=10.0)
    assert gate.pace(0.0) == 0.0
    assert gate.pace(0.0) == 0.0
    assert gate.pace(0.0) == pytest.approx(0.1)
    assert gate.pace(0.0) == pytest.approx(0.2)


def test_the_backoff_ceiling_is_a_serve_option() -> None:
    """--pool-backoff-max caps the pause between failed connects."""
    from sidecar.config import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args(["--pool-backoff-max", "1.5", "--emulator"]), {})
    gate = ConnectGate(config.pool, random.Random(7))  # noqa: S311 - not cryptography
    for attempt in range(8):
        gate.failed(UpstreamUnavailable("refused"), now=attempt * 10.0)
        assert gate.may_connect(attempt * 10.0 + 1.5)


def test_after_a_failure_a_caller_connects_only_when_no_attempt_is_due_or_under_way() -> None:
    """Callers too make one attempt at a time while the upstream is unreachable."""
    gate = _gate(backoff_initial_s=1.0, backoff_max_s=8.0)
    assert gate.caller_may_connect(0.0, opening=3)  # no failure yet: connect as needed
    gate.failed(UpstreamUnavailable("refused"), now=0.0)
    assert not gate.caller_may_connect(0.2, opening=0)  # the backoff runs
    assert gate.retry_in(0.2) > 0.3
    assert not gate.caller_may_connect(1.0, opening=1)  # passed, but an attempt is under way
    assert gate.caller_may_connect(1.0, opening=0)
    assert gate.retry_in(1.0) == 0.0
    gate.succeeded()
    assert gate.caller_may_connect(1.0, opening=5)

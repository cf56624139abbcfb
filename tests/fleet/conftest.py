"""Fixtures of the fleet quota tests: a real redis-server, and quotas started against it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from sidecar.fleet import FleetQuota
from tests.fleet.redis_server import RedisServer
from tests.fleet.support import MakeQuota, fleet_settings
from tests.helpers import require_executable
from tests.timing import scaled


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A redis-server on a free 127.0.0.1 port, without persistence."""
    server = RedisServer(require_executable("redis-server"))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client of :func:`redis_server`, for the tests' own looks at the keys."""
    client = Redis.from_url(redis_server.url, socket_timeout=scaled(5))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def make_quota(redis_server: RedisServer) -> AsyncIterator[MakeQuota]:
    """Start FleetQuotas on :func:`redis_server` (settings overrides as keywords); all are
    closed afterwards."""
    quotas: list[FleetQuota] = []

    async def make(**overrides: Any) -> FleetQuota:
        quota = FleetQuota(fleet_settings(redis_server.url, **overrides))
        quotas.append(quota)
        await quota.start()
        return quota

    try:
        yield make
    finally:
        for quota in reversed(quotas):
            await quota.aclose()

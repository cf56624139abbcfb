"""Shared fixtures: a real emulator on port 0 and a real sidecar server in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.config import OPTIONS, ApiKey, Config
from sidecar.emulator import Emulator
from sidecar.pool import PoolPolicy
from sidecar.server import SidecarServer
from tests.timing import scaled

TEST_KEY = "sk-test-key"

StartSidecar = Callable[..., Awaitable[SidecarServer]]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A DashScope emulator on 127.0.0.1 with an ephemeral port."""
    emu = Emulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.aclose()


# Option name (e.g. pool_max_size, acquire_timeout_s) -> field of the nested PoolPolicy.
_POOL_FIELDS = {o.name: o.policy_field for o in OPTIONS if o.policy_field is not None}


def sidecar_config(emulator: Emulator, **overrides: Any) -> Config:
    """A test configuration pointing at ``emulator``.

    ``overrides`` replace fields by their option names: pool settings too
    (``pool_max_size=1``, ``acquire_timeout_s=0.5``), into the nested policy.
    """
    policy: dict[str, Any] = {"min_idle": 2, "max_size": 4, "acquire_timeout_s": scaled(2.0)}
    for name in [n for n in overrides if n in _POOL_FIELDS]:
        policy[_POOL_FIELDS[name]] = overrides.pop(name)
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstream_url": emulator.url,
        "api_key": ApiKey(TEST_KEY),
        "pool": PoolPolicy(**policy),
        "connect_timeout_s": scaled(2.0),
        "start_timeout_s": scaled(2.0),
        "drain_grace_s": scaled(2.0),
    }
    return Config(**{**base, **overrides})


@pytest.fixture
async def start_sidecar(emulator: Emulator) -> AsyncIterator[StartSidecar]:
    """Start sidecar servers (config overrides as keywords); all are stopped afterwards."""
    servers: list[SidecarServer] = []

    async def start(wait_ready: bool = True, **overrides: Any) -> SidecarServer:
        server = SidecarServer(sidecar_config(emulator, **overrides))
        servers.append(server)
        await server.start()
        if wait_ready:
            assert await server.wait_ready(scaled(5.0)), repr(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            await server.stop(grace=scaled(1.0))


@pytest.fixture
async def sidecar(start_sidecar: StartSidecar) -> SidecarServer:
    """A warm sidecar with the default test configuration."""
    return await start_sidecar()


@pytest.fixture
async def client(sidecar: SidecarServer) -> AsyncIterator[AsyncSynthesizerClient]:
    """An async client connected to :func:`sidecar`; no gRPC retries, so tests see each status."""
    async with AsyncSynthesizerClient(sidecar.address, retry=False) as c:
        yield c

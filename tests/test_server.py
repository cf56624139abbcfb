"""Server assembly: health follows the pool's warmth, reflection lists the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from cosyvoice.sidecar.v1 import status_pb2, status_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.emulator import Emulator
from sidecar.server import SERVICE_NAME
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles, eventually
from tests.timing import scaled


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        # The grpcio-health-checking stubs type HealthStub for sync channels only.
        stub: Any = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        return int(response.status)


async def test_health_is_not_serving_until_the_pool_is_warm(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """NOT_SERVING while the handshakes run, SERVING once min_idle sockets are warm."""
    emulator.update_knobs(handshake_delay_s=scaled(0.5))
    server = await start_sidecar(wait_ready=False, pool_min_idle=2)
    assert await _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await _health(server.address, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await server.wait_ready(scaled(5))
    statuses: list[int] = []

    async def poll() -> None:
        statuses.append(await _health(server.address, SERVICE_NAME))

    for _ in range(100):
        await poll()
        if statuses[-1] == health_pb2.HealthCheckResponse.SERVING:
            break
    assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
    assert emulator.stats.connections_open == 2


async def test_stop_closes_every_upstream_socket_with_1000(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Shutdown: NOT_SERVING, then every pooled socket closed with code 1000."""
    server = await start_sidecar(pool_min_idle=3, pool_max_size=3)
    await assert_pool_settles(server, emulator)
    await server.stop(grace=scaled(1))
    await eventually(lambda: emulator.stats.connections_open == 0, what="sockets closed")
    assert emulator.stats.client_close_codes.get(1000) == 3


async def test_reflection_lists_the_synthesizer(start_sidecar: StartSidecar) -> None:
    """Server reflection names cosyvoice.sidecar.v1.Synthesizer, as grpcurl list shows."""
    server = await start_sidecar()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]

        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names: list[str] = []
        async for response in stub.ServerReflectionInfo(requests()):
            names = [s.name for s in response.list_services_response.service]
    assert SERVICE_NAME == "cosyvoice.sidecar.v1.Synthesizer"
    assert SERVICE_NAME in names
    assert "grpc.health.v1.Health" in names


async def test_status_rpc_shows_the_pool(start_sidecar: StartSidecar, emulator: Emulator) -> None:
    """SidecarStatus/GetStatus reports the pool's counts, readiness and upstream host."""
    server = await start_sidecar(pool_min_idle=3, pool_max_size=5)
    await assert_pool_settles(server, emulator)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = status_pb2_grpc.SidecarStatusStub(channel)
        status = await stub.GetStatus(status_pb2.GetStatusRequest())
    assert status.pool.idle == 3
    assert status.pool.busy == 0
    assert status.pool.max_size == 5
    assert status.pool.ready
    assert status.pool.opened_total == 3
    assert status.upstream_host == "127.0.0.1"
    assert status.active_calls == 0
    assert not status.draining

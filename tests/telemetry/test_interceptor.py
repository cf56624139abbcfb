"""The server interceptor against a real grpc.aio server: one SERVER span per call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry.trace import SpanKind, StatusCode

from tests.helpers import eventually
from tests.telemetry.conftest import Otel, point_value
from tests.timing import scaled

HEALTH = "grpc.health.v1.Health"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
async def health(otel: Otel) -> AsyncIterator[Any]:
    """A real server with the health service behind the interceptor, and a client stub."""
    interceptor = otel.telemetry.server_interceptor([HEALTH])
    assert interceptor is not None
    server = grpc.aio.server(interceptors=[interceptor])
    servicer = health_aio.HealthServicer()
    await servicer.set("up", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            # The grpcio-health-checking stubs type HealthStub for sync channels only.
            stub: Any = health_pb2_grpc.HealthStub(channel)
            yield stub
    finally:
        await server.stop(None)


async def test_unary_call_continues_the_callers_traceparent(otel: Otel, health: Any) -> None:
    """A traceparent in the metadata becomes the server span's remote parent; tracestate too."""
    metadata = (
        ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),
        ("tracestate", "vendor=opaque"),
    )
    await health.Check(
        health_pb2.HealthCheckRequest(service="up"), metadata=metadata, timeout=scaled(5)
    )
    span = otel.span(f"{HEALTH}/Check")
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.context.trace_state.get("vendor") == "opaque"
    assert span.attributes is not None
    assert span.attributes["rpc.system.name"] == "grpc"
    assert span.attributes["rpc.method"] == f"{HEALTH}/Check"
    assert span.attributes["rpc.response.status_code"] == "OK"
    assert span.attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(span.attributes["network.peer.port"], int)
    assert span.status.status_code is StatusCode.UNSET


async def test_call_without_traceparent_starts_a_new_trace(otel: Otel, health: Any) -> None:
    """No trace context in the metadata: a root span, and each call its own trace."""
    for _ in range(2):
        await health.Check(health_pb2.HealthCheckRequest(service="up"), timeout=scaled(5))
    first, second = otel.spans()
    assert first.parent is None
    assert second.parent is None
    assert first.context.trace_id != second.context.trace_id


async def test_aborted_call_records_its_status_code(otel: Otel, health: Any) -> None:
    """NOT_FOUND from context.abort is the span's status code; a caller error is no span error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=scaled(5))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    span = otel.span(f"{HEALTH}/Check")
    assert span.attributes is not None
    assert span.attributes["rpc.response.status_code"] == "NOT_FOUND"
    assert span.attributes["error.type"] == "NOT_FOUND"
    assert span.status.status_code is StatusCode.UNSET
    durations = otel.metrics()["rpc.server.call.duration"]
    point = point_value(durations, **{"rpc.response.status_code": "NOT_FOUND"})
    assert point.count == 1


async def test_streaming_call_cancelled_by_the_caller(otel: Otel, health: Any) -> None:
    """A server stream the caller cancels ends its span with CANCELLED."""
    call = health.Watch(health_pb2.HealthCheckRequest(service="up"), timeout=scaled(5))
    first = await call.read()
    assert isinstance(first, health_pb2.HealthCheckResponse)
    call.cancel()
    await eventually(lambda: bool(otel.spans()), what="the Watch span ends")
    span = otel.span(f"{HEALTH}/Watch")
    assert span.attributes is not None
    assert span.attributes["rpc.response.status_code"] == "CANCELLED"


async def test_streaming_call_past_its_deadline(otel: Otel, health: Any) -> None:
    """A deadline that expires mid-stream is DEADLINE_EXCEEDED, a server-side error."""
    call = health.Watch(health_pb2.HealthCheckRequest(service="up"), timeout=scaled(0.3))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: bool(otel.spans()), what="the Watch span ends")
    span = otel.span(f"{HEALTH}/Watch")
    assert span.attributes is not None
    assert span.attributes["rpc.response.status_code"] == "DEADLINE_EXCEEDED"
    assert span.status.status_code is StatusCode.ERROR


async def test_services_not_listed_are_not_traced(otel: Otel) -> None:
    """Only the listed services get spans (health probes would drown the traces)."""
    interceptor = otel.telemetry.server_interceptor(["cosyvoice.sidecar.v1.Synthesizer"])
    assert interceptor is not None
    server = grpc.aio.server(interceptors=[interceptor])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=scaled(5))
    finally:
        await server.stop(None)
    assert otel.spans() == []
    assert "rpc.server.call.duration" not in otel.metrics()


def test_disabled_telemetry_installs_no_interceptor() -> None:
    """Telemetry off: no interceptor at all, so calls pay nothing."""
    from sidecar.telemetry import Telemetry

    assert Telemetry.disabled().server_interceptor([HEALTH]) is None

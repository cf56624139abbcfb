"""Telemetry on in-memory providers: every span ends in a list, metrics are read on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from sidecar.telemetry import Telemetry
from tests.conftest import sidecar_config
from tests.timing import scaled


@dataclass
class Otel:
    """A :class:`Telemetry` on in-memory providers, and readers of what it recorded."""

    telemetry: Telemetry
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans, oldest first, optionally only those called ``name``."""
        spans = list(self.exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called ``name``."""
        found = self.spans(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [s.name for s in self.spans()]

    def metrics(self) -> dict[str, list[Any]]:
        """Every metric's data points by metric name (collected now)."""
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        if data is None:
            return points
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points


def point_value(points: list[Any], **attributes: Any) -> Any:
    """The value (sum/gauge) or the point (histogram) whose attributes include ``attributes``."""
    matching = [p for p in points if all(p.attributes.get(k) == v for k, v in attributes.items())]
    assert len(matching) == 1, f"{len(matching)} points match {attributes}: {points}"
    point = matching[0]
    return point.value if isinstance(point, NumberDataPoint) else point


@pytest.fixture
def otel() -> Iterator[Otel]:
    """In-memory tracing and metrics; W3C trace context, whatever the global propagator is."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(
        tracer_provider, meter_provider, propagator=TraceContextTextMapPropagator()
    )
    try:
        yield Otel(telemetry, exporter, reader)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


StartTraced = Callable[..., Awaitable[SidecarServer]]


@pytest.fixture
async def start_traced(emulator: Emulator, otel: Otel) -> AsyncIterator[StartTraced]:
    """Start sidecars (config overrides as keywords) whose telemetry is ``otel``'s."""
    servers: list[SidecarServer] = []

    async def start(**overrides: Any) -> SidecarServer:
        server = SidecarServer(sidecar_config(emulator, **overrides), telemetry=otel.telemetry)
        servers.append(server)
        await server.start()
        assert await server.wait_ready(scaled(5.0)), repr(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            await server.stop(grace=scaled(1.0))

"""A small OTLP/gRPC receiver: the collector's trace and metrics services, recording requests.

The services are the bench's OTLP sink's (:func:`add_otlp_services`); this
receiver keeps every request for the tests' assertions. It stands in for an
OpenTelemetry Collector so the exporters' real gRPC path is exercised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from cosyvoice_sidecar_bench.otlp_sink import add_otlp_services
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["OtlpReceiver", "otlp_receiver", "span_attributes"]


class OtlpReceiver:
    """What the receiver got: trace and metrics export requests, with their metadata."""

    def __init__(self) -> None:
        self.trace_requests: list[trace_pb.ExportTraceServiceRequest] = []
        self.metrics_requests: list[metrics_pb.ExportMetricsServiceRequest] = []
        self.metadata: list[tuple[tuple[str, Any], ...]] = []
        self.endpoint = ""

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with its resource's attributes."""
        return [span for request in self.spans_per_request() for span in request]

    def spans_per_request(self) -> list[list[tuple[dict[str, Any], Span]]]:
        """The spans of each export request, in the order the requests came."""
        out: list[list[tuple[dict[str, Any], Span]]] = []
        for request in self.trace_requests:
            spans: list[tuple[dict[str, Any], Span]] = []
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    spans.extend((resource, span) for span in scope_spans.spans)
            out.append(spans)
        return out

    def metric_names(self) -> set[str]:
        return {
            metric.name
            for request in self.metrics_requests
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        }

    async def _export_traces(
        self,
        request: trace_pb.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_pb.ExportTraceServiceResponse:
        self.trace_requests.append(request)
        self.metadata.append(tuple(context.invocation_metadata() or ()))
        return trace_pb.ExportTraceServiceResponse()

    async def _export_metrics(
        self,
        request: metrics_pb.ExportMetricsServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> metrics_pb.ExportMetricsServiceResponse:
        self.metrics_requests.append(request)
        return metrics_pb.ExportMetricsServiceResponse()


def span_attributes(span: Span) -> dict[str, Any]:
    """A received span's attributes as plain Python values."""
    return {a.key: _value(a.value) for a in span.attributes}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    """Run a receiver on 127.0.0.1 (ephemeral port); ``endpoint`` is its http:// URL."""
    receiver = OtlpReceiver()
    server = grpc.aio.server()
    add_otlp_services(server, receiver._export_traces, receiver._export_metrics)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await server.stop(None)

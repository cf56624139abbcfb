"""A stand-in OpenTelemetry collector for the bench: takes OTLP/gRPC traces and metrics.

``bench --otlp-sink`` runs it as a process of its own and points the
``sidecar-b`` mode at it, so a tracing A/B measures the exporter a
production sidecar runs (OTLP over gRPC to a collector on the same machine,
e.g. an OpenTelemetry Collector container in the pod) instead of the console
exporter, whose JSON rendering is far heavier than any real deployment's.

Protocol (stdout lines are JSON):

1. it prints ``{"event": "ready", "address": "127.0.0.1:PORT"}``;
2. each line read on stdin makes it print ``{"event": "counts", ...}``:
   exports received, spans, metric data points;
3. it exits at the end of stdin or on SIGTERM.

Loopback only; it keeps nothing but the counts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

__all__ = ["Counts", "add_otlp_services", "main"]

_Context = grpc.aio.ServicerContext[Any, Any]
TraceHandler = Callable[
    [trace_pb.ExportTraceServiceRequest, _Context], Awaitable[trace_pb.ExportTraceServiceResponse]
]
MetricsHandler = Callable[
    [metrics_pb.ExportMetricsServiceRequest, _Context],
    Awaitable[metrics_pb.ExportMetricsServiceResponse],
]


def add_otlp_services(
    server: grpc.aio.Server, on_traces: TraceHandler, on_metrics: MetricsHandler
) -> None:
    """Serve the collector's trace and metrics Export methods with these handlers.

    Generic handlers built from the ``opentelemetry-proto`` messages: the
    generated ``*_pb2_grpc`` modules carry no type information.
    """
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        on_traces,
                        trace_pb.ExportTraceServiceRequest.FromString,
                        trace_pb.ExportTraceServiceResponse.SerializeToString,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.metrics.v1.MetricsService",
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        on_metrics,
                        metrics_pb.ExportMetricsServiceRequest.FromString,
                        metrics_pb.ExportMetricsServiceResponse.SerializeToString,
                    )
                },
            ),
        )
    )


class Counts:
    """What the sink received."""

    def __init__(self) -> None:
        self.exports = 0
        self.spans = 0
        self.metric_points = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "counts",
            "exports": self.exports,
            "spans": self.spans,
            "metric_points": self.metric_points,
        }

    async def traces(
        self, request: trace_pb.ExportTraceServiceRequest, _: _Context
    ) -> trace_pb.ExportTraceServiceResponse:
        self.exports += 1
        for resource in request.resource_spans:
            self.spans += sum(len(scope.spans) for scope in resource.scope_spans)
        return trace_pb.ExportTraceServiceResponse()

    async def metrics(
        self, request: metrics_pb.ExportMetricsServiceRequest, _: _Context
    ) -> metrics_pb.ExportMetricsServiceResponse:
        self.exports += 1
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is not None:
                        self.metric_points += len(getattr(metric, kind).data_points)
        return metrics_pb.ExportMetricsServiceResponse()


async def _serve() -> int:
    counts = Counts()
    server = grpc.aio.server()
    add_otlp_services(server, counts.traces, counts.metrics)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _print({"event": "ready", "address": f"127.0.0.1:{port}"})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def answer() -> None:
        while await reader.readline():
            _print(counts.to_dict())

    answering = asyncio.ensure_future(answer())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({answering, stopping}, return_when=asyncio.FIRST_COMPLETED)
    answering.cancel()
    stopping.cancel()
    await server.stop(1.0)
    return 0


def _print(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def main() -> int:
    return asyncio.run(_serve())


if __name__ == "__main__":
    sys.exit(main())

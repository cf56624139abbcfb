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
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

__all__ = ["Counts", "main"]


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


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, counts: Counts) -> None:
        self._counts = counts

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._counts.exports += 1
        self._counts.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, counts: Counts) -> None:
        self._counts = counts

    async def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._counts.exports += 1
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is not None:
                        self._counts.metric_points += len(getattr(metric, kind).data_points)
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def _serve() -> int:
    counts = Counts()
    server = grpc.aio.server()
    # The generated registration functions carry no annotations.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(counts), server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(counts), server)  # type: ignore[no-untyped-call]
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

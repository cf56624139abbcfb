"""Tracing overhead, A/B, in one process: ``python -m tests.telemetry.overhead [calls] [rounds]``.

Sequential Synthesize calls against the emulator (as fast as it goes, so the
sidecar's own cost dominates), through one in-process sidecar with telemetry
off and one with tracing and metrics on (a batch span processor into an
in-memory exporter, an in-memory metric reader: everything but the network).
Rounds alternate off/on so drift on a shared machine hits both alike. Prints
per-call wall-clock latency (p50, p95, mean) and process CPU per call.
Not a test: numbers, not assertions.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from cosyvoice_sidecar_client import AsyncSynthesizerClient
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from sidecar.telemetry import Telemetry
from tests.conftest import sidecar_config


def _traced() -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    shutdown = [tracer_provider.shutdown, meter_provider.shutdown]
    return Telemetry(tracer_provider, meter_provider, on_shutdown=shutdown), exporter


async def _run(emulator: Emulator, telemetry: Telemetry, calls: int) -> tuple[list[float], float]:
    server = SidecarServer(sidecar_config(emulator), telemetry=telemetry)
    await server.start()
    assert await server.wait_ready(10)
    latencies = []
    try:
        async with AsyncSynthesizerClient(server.address) as client:
            for _ in range(10):  # warm the channel and the code paths
                await client.synthesize("Warm up.")
            cpu = time.process_time()
            for _ in range(calls):
                started = time.perf_counter()
                await client.synthesize("Hello, this is one short sentence.")
                latencies.append((time.perf_counter() - started) * 1000)
            cpu = time.process_time() - cpu
    finally:
        await server.stop(grace=1.0)
    return latencies, cpu * 1000 / calls


async def main(calls: int, rounds: int) -> None:
    emulator = Emulator()
    await emulator.start()
    results: dict[str, tuple[list[float], list[float]]] = {"off": ([], []), "on": ([], [])}
    spans = 0
    try:
        for _ in range(rounds):
            for mode in ("off", "on"):
                if mode == "on":
                    telemetry, exporter = _traced()
                else:
                    telemetry, exporter = Telemetry.disabled(), None
                latencies, cpu_ms = await _run(emulator, telemetry, calls)
                await telemetry.aclose()
                if exporter is not None:
                    spans += len(exporter.get_finished_spans())
                results[mode][0].extend(latencies)
                results[mode][1].append(cpu_ms)
    finally:
        await emulator.aclose()
    out = sys.stdout
    out.write(f"{calls} sequential Synthesize calls x {rounds} rounds per mode; ")
    out.write(f"{spans} spans exported\n")
    out.write(f"{'tracing':8} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'CPU ms/call':>12}\n")
    for mode, (latencies, cpu) in results.items():
        quantiles = statistics.quantiles(latencies, n=20)
        out.write(
            f"{mode:8} {statistics.median(latencies):8.3f} {quantiles[18]:8.3f} "
            f"{statistics.fmean(latencies):8.3f} {statistics.fmean(cpu):12.3f}\n"
        )


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 200,
            int(sys.argv[2]) if len(sys.argv) > 2 else 3,
        )
    )

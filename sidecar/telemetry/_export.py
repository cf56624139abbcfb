"""Building a :class:`Telemetry` from the standard OpenTelemetry environment variables.

This module decides only *which* exporters run; the SDK and the exporters
read their own standard variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``,
``OTEL_EXPORTER_OTLP_ENDPOINT``/``_HEADERS``/``_INSECURE``/``_CERTIFICATE``,
``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``, ...) from the process
environment, as every OpenTelemetry SDK does.

``OTEL_METRICS_EXPORTER=prometheus`` serves the metrics for scraping instead
of pushing them: ``http://OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT/metrics``
(the specification's variables; ``localhost`` and 9464 by default, so set the
host to ``0.0.0.0`` for a scraper outside the pod).

Everything is off unless asked for: with no ``OTEL_*_EXPORTER`` and no OTLP
endpoint set, the result is :meth:`Telemetry.disabled` and nothing is
installed. Unlike the SDK's own auto-configuration, the default exporter is
``none`` rather than ``otlp``: a sidecar must not start sending spans to a
``localhost:4317`` nobody runs just because it was upgraded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Final

from sidecar import __version__
from sidecar.errors import ConfigError
from sidecar.telemetry._core import Telemetry

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["ExportSettings", "telemetry_from_env"]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME: Final = "cosyvoice-sidecar"
_EXPORTERS: Final = ("otlp", "console", "prometheus", "none")
# Spans per export unless OTEL_BSP_MAX_EXPORT_BATCH_SIZE says otherwise; the
# SDK's default is 512. The exporter encodes a batch in Python while holding
# the GIL, and the event loop that serves every stream waits meanwhile. In
# three bench runs at 100 streams exporting over OTLP/gRPC, batches of 64
# instead of 512 took the p99 overhead from 76-127 ms to 30-52 ms, at the same
# CPU (docs/bench/results-2026-11-29-export-batch-ab.md).
EXPORT_BATCH_SPANS: Final = 64
_METRICS_ONLY: Final = ("prometheus",)
_PROTOCOLS: Final = ("grpc", "http/protobuf")
_OTLP_PACKAGES: Final = {
    "grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "http/protobuf": "opentelemetry-exporter-otlp-proto-http",
}


@dataclass(frozen=True)
class ExportSettings:
    """Which exporters run for traces and for metrics, and the OTLP protocol of each."""

    traces: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    traces_protocol: str = "grpc"
    metrics_protocol: str = "grpc"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExportSettings:
        """Read the ``OTEL_*`` selection variables; raise :class:`ConfigError` when invalid."""
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip() or "grpc"
        return cls(
            traces=_exporters(env, "TRACES"),
            metrics=_exporters(env, "METRICS"),
            traces_protocol=_protocol(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol),
            metrics_protocol=_protocol(env, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol),
        )

    def describe(self) -> str:
        def one(exporters: tuple[str, ...], protocol: str) -> str:
            names = [f"otlp/{protocol}" if e == "otlp" else e for e in exporters]
            return ",".join(names) or "off"

        return (
            f"traces {one(self.traces, self.traces_protocol)}, "
            f"metrics {one(self.metrics, self.metrics_protocol)}"
        )


def _exporters(env: Mapping[str, str], signal: str) -> tuple[str, ...]:
    variable = f"OTEL_{signal}_EXPORTER"
    raw = env.get(variable, "").strip()
    if not raw:
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        return ("otlp",) if any(env.get(e, "").strip() for e in endpoints) else ()
    names = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",") if part.strip()))
    allowed = (
        _EXPORTERS
        if signal == "METRICS"
        else tuple(e for e in _EXPORTERS if e not in _METRICS_ONLY)
    )
    for name in names:
        if name not in allowed:
            raise ConfigError(
                f"{variable}={raw!r}: each exporter must be one of {', '.join(allowed)}"
            )
    return () if "none" in names else names


def _protocol(env: Mapping[str, str], variable: str, default: str) -> str:
    value = env.get(variable, "").strip() or default
    if variable not in env:
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    if value not in _PROTOCOLS:
        raise ConfigError(f"{variable} must be one of {', '.join(_PROTOCOLS)} (got {value!r})")
    return value


def telemetry_from_env(
    env: Mapping[str, str] | None = None, *, console: IO[str] | None = None
) -> Telemetry:
    """Build the sidecar's :class:`Telemetry` from the environment (see the module docstring).

    ``console`` is where the console exporters write (default stderr: stdout
    carries the sidecar's ready lines). Raises :class:`ConfigError` for an
    unknown exporter or protocol, or an OTLP protocol whose package is not
    installed.
    """
    env = os.environ if env is None else env
    settings = ExportSettings.from_env(env)
    if not (settings.traces or settings.metrics):
        return Telemetry.disabled()
    # The SDK is imported only when something is exported: it costs ~50 ms at startup.
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    out = console or sys.stderr
    resource = _resource()
    shutdown: list[Callable[[], object]] = []
    tracer_provider = None
    if settings.traces:
        tracer_provider = TracerProvider(resource=resource)
        for name in settings.traces:
            exporter = (
                ConsoleSpanExporter(out=out)
                if name == "console"
                else _otlp_span_exporter(settings.traces_protocol)
            )
            tracer_provider.add_span_processor(
                BatchSpanProcessor(exporter, max_export_batch_size=_export_batch_size(env))
            )
        shutdown.append(tracer_provider.shutdown)
    meter_provider = None
    if settings.metrics:
        readers: list[MetricReader] = []
        for name in settings.metrics:
            if name == "prometheus":
                readers.append(_prometheus_reader(env, shutdown))
            else:
                readers.append(
                    PeriodicExportingMetricReader(
                        ConsoleMetricExporter(out=out)
                        if name == "console"
                        else _otlp_metric_exporter(settings.metrics_protocol)
                    )
                )
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        # Last of all (the hooks run in reverse): the readers' final export comes after
        # the scrape endpoint has closed and the spans are flushed.
        shutdown.insert(0, meter_provider.shutdown)
    log.info("telemetry: %s", settings.describe())
    return Telemetry(tracer_provider, meter_provider, on_shutdown=shutdown)


def _export_batch_size(env: Mapping[str, str]) -> int | None:
    """Our batch size, or None to let the SDK read OTEL_BSP_MAX_EXPORT_BATCH_SIZE."""
    return None if env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "").strip() else EXPORT_BATCH_SPANS


def _prometheus_reader(
    env: Mapping[str, str], shutdown: list[Callable[[], object]]
) -> MetricReader:
    """A reader serving ``/metrics`` for Prometheus; its HTTP server stops with the telemetry."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "").strip() or "localhost"
    raw_port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "").strip() or "9464"
    try:
        port = int(raw_port)
        if not 0 <= port <= 65535:
            raise ValueError(raw_port)
    except ValueError as exc:
        raise ConfigError(
            f"OTEL_EXPORTER_PROMETHEUS_PORT must be a port number (got {raw_port!r})"
        ) from exc
    reader = PrometheusMetricReader()
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        reader.shutdown()  # unregisters its collector
        raise ConfigError(f"cannot serve Prometheus metrics on {host}:{port}: {exc}") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    shutdown.append(stop)
    log.info("metrics for Prometheus on http://%s:%d/metrics", host, server.server_address[1])
    return reader


def _resource() -> Resource:
    """The SDK's resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), our defaults."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _otlp_span_exporter(protocol: str) -> SpanExporter:
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter as HttpSpanExporter,
        )

        exporter: SpanExporter = HttpSpanExporter()
        return exporter
    except ImportError as exc:
        raise _missing(protocol) from exc


def _otlp_metric_exporter(protocol: str) -> MetricExporter:
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            return OTLPMetricExporter()
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPMetricExporter as HttpMetricExporter,
        )

        exporter: MetricExporter = HttpMetricExporter()
        return exporter
    except ImportError as exc:
        raise _missing(protocol) from exc


def _missing(protocol: str) -> ConfigError:
    package = _OTLP_PACKAGES[protocol]
    return ConfigError(f"OTLP over {protocol} needs the {package} package: pip install {package}")

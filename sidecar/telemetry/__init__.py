"""OpenTelemetry for the sidecar: spans per call, pool and latency metrics, OTLP export.

One :class:`Telemetry` per server, built by :func:`telemetry_from_env` from
the standard ``OTEL_*`` variables (off unless an exporter or an OTLP endpoint
is configured) or, in tests, from in-memory providers; it is passed to the
pool, the servicer and each call through their constructors. The names of
spans, attributes and metrics live in ``_names``; ``docs/telemetry.md``
lists them.
"""

from __future__ import annotations

from sidecar.telemetry._core import Telemetry
from sidecar.telemetry._export import ExportSettings, telemetry_from_env
from sidecar.telemetry._logs import (
    LOG_FORMATS,
    JsonFormatter,
    TextFormatter,
    TraceContextFilter,
    call_log_fields,
    configure_logging,
    redact,
)
from sidecar.telemetry._scopes import Borrow, Connect, Return
from sidecar.telemetry._synthesis import Synthesis, TaskReport

__all__ = [
    "LOG_FORMATS",
    "Borrow",
    "Connect",
    "ExportSettings",
    "JsonFormatter",
    "Return",
    "Synthesis",
    "TaskReport",
    "Telemetry",
    "TextFormatter",
    "TraceContextFilter",
    "call_log_fields",
    "configure_logging",
    "redact",
    "telemetry_from_env",
]

"""Log lines that carry the current trace and span ids, as text or as JSON.

A log line written while a call's span (or a background connect's) is
current names that span, so a line in ``kubectl logs`` leads to its trace
and a trace leads to its lines. The JSON format (one object per line) is for
log collectors that parse structured logs.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Final

from opentelemetry import trace

from sidecar.config import LOG_FORMATS

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "TraceContextFilter",
    "configure_logging",
]

_TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (hex, or empty) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        return True


class TextFormatter(logging.Formatter):
    """The classic one-line format, with ``trace_id=… span_id=…`` appended inside a span."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            span_id = getattr(record, "span_id", "")
            head, newline, rest = line.partition("\n")
            line = f"{head} trace_id={trace_id} span_id={span_id}{newline}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace/span ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text", stream: IO[str] | None = None) -> None:
    """Send the root logger's records to ``stream`` (stderr) in ``log_format``, with trace ids.

    Like :func:`logging.basicConfig`, does nothing when the root logger has
    handlers already (an embedding application's, or pytest's).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    if root.handlers:
        return
    # Neither format shows the process or the thread: spare every record the
    # getpid() system call and thread lookups (this process owns its logging).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())

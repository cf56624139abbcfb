"""Log lines people can query: trace and span ids, the call's ids, secrets never.

A log line written while a call's span (or a background connect's) is
current names that span, so a line in ``kubectl logs`` leads to its trace
and a trace leads to its lines. A line written while a call runs (by the
servicer, the call's pumps, anything they call) also names the call:
``request_id``, and ``task_id`` once DashScope's task started. The JSON
format (one object per line) has them as fields, with the access line's
fields (``grpc_code``, ``duration_ms``, ``audio_bytes``, ...); the text
format appends them.

Secrets never reach the output, whatever logger wrote them (websockets
logs every handshake header at debug, ``Authorization: Bearer <key>``
included): every formatted line goes through :func:`redact`, which masks
bearer credentials and the configured secret values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Final

from opentelemetry import trace

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "TraceContextFilter",
    "call_log_fields",
    "configure_logging",
    "redact",
]

LOG_FORMATS: Final = ("text", "json")
_TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The fields of the running call, shared by every task the call creates.
_CALL: ContextVar[dict[str, str] | None] = ContextVar("cosyvoice_call_log_fields", default=None)
_MASK: Final = "***"
# A bearer credential, or whatever follows an Authorization header or key name.
_CREDENTIALS: Final = re.compile(
    r"(?i)(\bbearer\s+|\bauthorization\s*[:=]\s*(?:bearer\s+)?|\bapi[_-]?key\s*[:=]\s*)"
    r"[^\s'\",;]+"
)
# Third-party loggers that talk at info about every connection (the
# embedded emulator's websockets server): shown only at debug.
_CHATTY: Final = ("websockets",)


def redact(line: str, secrets: Iterable[str] = ()) -> str:
    """Return ``line`` with bearer credentials and every one of ``secrets`` masked."""
    line = _CREDENTIALS.sub(lambda m: m.group(1) + _MASK, line)
    for secret in secrets:
        if secret and secret in line:
            line = line.replace(secret, _MASK)
    return line


@contextlib.contextmanager
def call_log_fields(**fields: str) -> Iterator[dict[str, str]]:
    """Name the running call in every log line written inside (and by tasks created inside).

    Yields the fields: set more (e.g. ``task_id``) as they become known.
    """
    values = dict(fields)
    token = _CALL.set(values)
    try:
        yield values
    finally:
        _CALL.reset(token)


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (hex, or empty) and the call's fields to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        record.call_fields = _CALL.get() or {}
        return True


class _Redacting(logging.Formatter):
    """A formatter whose every line goes through :func:`redact`."""

    def __init__(
        self, fmt: str | None = None, secrets: Callable[[], Iterable[str]] = tuple
    ) -> None:
        super().__init__(fmt)
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.render(record), self._secrets())

    def render(self, record: logging.LogRecord) -> str:
        return super().format(record)


class TextFormatter(_Redacting):
    """The classic one-line format, with the call's and the trace's ids appended."""

    def __init__(self, secrets: Callable[[], Iterable[str]] = tuple) -> None:
        super().__init__(_TEXT, secrets)

    def render(self, record: logging.LogRecord) -> str:
        line = super().render(record)
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items() if v)
        if extra:
            head, newline, rest = line.partition("\n")
            line = f"{head} {extra}{newline}{rest}"
        return line


class JsonFormatter(_Redacting):
    """One JSON object per line: time, level, logger, message, the call's and trace's ids,
    the access line's fields, exception."""

    def render(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in _fields(record).items() if v)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "call_fields", None) or {})
    fields.update(getattr(record, "call", None) or {})  # an access line's extra fields
    fields["trace_id"] = getattr(record, "trace_id", "")
    fields["span_id"] = getattr(record, "span_id", "") if fields["trace_id"] else ""
    return fields


def configure_logging(
    level: str,
    log_format: str = "text",
    stream: IO[str] | None = None,
    *,
    secrets: Callable[[], Iterable[str]] = tuple,
) -> None:
    """Send the root logger's records to ``stream`` (stderr) in ``log_format``.

    ``secrets()`` names the values to mask besides bearer credentials (the API
    key, the callers' token). Like :func:`logging.basicConfig`, does nothing
    when the root logger has handlers already (an embedding application's, or
    pytest's).
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
    formatter = JsonFormatter(secrets=secrets) if log_format == "json" else TextFormatter(secrets)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if level.lower() != "debug":
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)

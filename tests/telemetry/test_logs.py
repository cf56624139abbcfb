"""Log lines carry the current trace and span ids, as text or as one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from sidecar.telemetry import JsonFormatter, TextFormatter, TraceContextFilter
from tests.telemetry.conftest import Otel


@pytest.fixture
def stream() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(TraceContextFilter())
    logger = logging.getLogger("tests.telemetry.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, out, handler
    finally:
        logger.removeHandler(handler)


def test_json_lines_carry_the_span_they_were_written_in(
    otel: Otel, stream: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]
) -> None:
    """Inside a span: trace_id and span_id of that span; outside: neither key."""
    logger, out, handler = stream
    handler.setFormatter(JsonFormatter())
    with otel.telemetry.connecting("warm", detached=True):
        logger.info("opened %s", "one")
    logger.warning("after")
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    span = otel.span("connect")
    assert inside["message"] == "opened one"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "tests.telemetry.logs"
    assert inside["trace_id"] == format(span.context.trace_id, "032x")
    assert inside["span_id"] == format(span.context.span_id, "016x")
    assert inside["time"].endswith("+00:00")
    assert "trace_id" not in outside
    assert outside["level"] == "WARNING"


def test_json_keeps_exceptions_on_one_line(
    stream: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    """A traceback goes into the "exception" field; the record is still one line."""
    logger, out, handler = stream
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    (line,) = out.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_lines_append_the_ids_inside_a_span(
    otel: Otel, stream: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]
) -> None:
    """The text format appends trace_id=… span_id=… inside a span, nothing outside."""
    logger, out, handler = stream
    handler.setFormatter(TextFormatter())
    with otel.telemetry.connecting("warm", detached=True):
        logger.info("inside")
    logger.info("outside")
    inside, outside = out.getvalue().splitlines()
    span = otel.span("connect")
    assert inside.endswith(
        f"tests.telemetry.logs: inside trace_id={span.context.trace_id:032x} "
        f"span_id={span.context.span_id:016x}"
    )
    assert outside.endswith("tests.telemetry.logs: outside")

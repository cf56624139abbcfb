"""Log lines carry the current trace and span ids, as text or as one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.telemetry import JsonFormatter, TextFormatter, TraceContextFilter
from tests.processes import Process
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


async def test_a_json_call_line_has_every_field_a_log_pipeline_queries() -> None:
    """serve --log-format json: one access line per call with its ids and figures as fields;
    every line of the call names it; the emulator's chatter stays out at info."""
    async with Process(
        "serve",
        "--emulator",
        "--listen=127.0.0.1:0",
        "--log-format=json",
    ) as server:
        address = (await server.expect(r"serving on (\S+)")).group(1)
        async with AsyncSynthesizerClient(address) as client:
            result = await client.synthesize(
                "Logged as fields.", metadata=(("x-request-id", "req-json-1"),)
            )
        assert await server.stop() == 0
        _, _, log = await server.finish()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "sidecar.access"]
    assert len(access) == 1, access
    entry = access[0]
    assert entry["request_id"] == "req-json-1"
    assert entry["task_id"] == result.started.task_id
    assert entry["dashscope_request_uuid"] == result.completed.request_uuid
    assert entry["grpc_code"] == "OK"
    assert entry["rpc_method"] == "Synthesize"
    assert entry["audio_bytes"] == result.completed.audio_bytes
    assert entry["billed_characters"] == result.completed.billed_characters
    assert entry["duration_ms"] > 0
    assert "pool_wait_ms" in entry
    of_the_call = [line for line in lines if line.get("request_id") == "req-json-1"]
    assert len(of_the_call) >= 2  # the task's line and the access line at least
    assert not [line for line in lines if line["logger"].startswith("websockets")]

"""The real ``cosyvoice-sidecar serve`` process: OTLP export, console spans, JSON logs."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.config import ConfigError, add_serve_arguments, config_from_args
from tests.helpers import eventually
from tests.processes import Process
from tests.telemetry.otlp_receiver import otlp_receiver, span_attributes

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]
SYNTHESIZE = "cosyvoice.sidecar.v1.Synthesizer/Synthesize"


async def test_serve_exports_the_callers_trace_over_otlp() -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set: the call's spans and the metrics reach the receiver,
    in the caller's trace."""
    async with otlp_receiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "sidecar-e2e",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
        }
        async with Process("serve", "--emulator", "--listen", "127.0.0.1:0", env=env) as server:
            address = (await server.expect(r"serving on (\S+)")).group(1)
            async with AsyncSynthesizerClient(address) as client:
                result = await client.synthesize("Hello over OTLP.", metadata=TRACEPARENT)

            def in_trace() -> dict[str, Any]:
                return {
                    span.name: (resource, span)
                    for resource, span in receiver.spans()
                    if span.trace_id.hex() == TRACE_ID
                }

            names = {SYNTHESIZE, "borrow", "synthesis", "return"}
            await eventually(lambda: names <= set(in_trace()), what="the call's spans arrive")
            await eventually(
                lambda: "cosyvoice.synthesis.tasks" in receiver.metric_names(),
                what="the metrics arrive",
            )
            assert await server.stop() == 0
    spans = in_trace()
    resource, rpc = spans[SYNTHESIZE]
    assert resource["service.name"] == "sidecar-e2e"
    assert rpc.parent_span_id.hex() == PARENT_ID
    for name in ("borrow", "synthesis", "return"):
        assert spans[name][1].parent_span_id == rpc.span_id
    assert span_attributes(spans["synthesis"][1])["dashscope.task_id"] == result.started.task_id
    assert {"cosyvoice.pool.connection.count", "rpc.server.call.duration"} <= (
        receiver.metric_names()
    )


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in ``text``: one-line log records and the console's multi-line spans."""
    decoder = json.JSONDecoder()
    objects, index = [], 0
    while (start := text.find("{", index)) != -1:
        try:
            obj, index = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        objects.append(obj)
    return objects


async def test_json_logs_and_console_spans_on_stderr() -> None:
    """--log-format json and OTEL_TRACES_EXPORTER=console: logs and spans on stderr carry the
    caller's trace id; stdout keeps exactly its two ready lines."""
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    args = ("serve", "--emulator", "--listen", "127.0.0.1:0", "--log-format", "json")
    async with Process(*args, env=env) as server:
        address = (await server.expect(r"serving on (\S+)")).group(1)
        async with AsyncSynthesizerClient(address) as client:
            result = await client.synthesize("Hello, console.", metadata=TRACEPARENT)
        assert await server.stop() == 0
        _, out, err = await server.finish()
    assert server.lines + out.splitlines() == [server.lines[0], f"serving on {address}"]
    objects = _json_objects(err)
    logs = [o for o in objects if "level" in o and "message" in o]
    spans = [o for o in objects if "context" in o and "name" in o]
    assert logs
    assert all(set(o) >= {"time", "level", "logger", "message"} for o in logs)
    about_task = [o for o in logs if result.started.task_id in o["message"]]
    assert about_task
    assert {o.get("trace_id") for o in about_task} == {TRACE_ID}
    in_trace = {s["name"] for s in spans if s["context"]["trace_id"] == f"0x{TRACE_ID}"}
    assert in_trace == {SYNTHESIZE, "borrow", "synthesis", "return"}


async def test_an_invalid_otel_variable_stops_serve_with_exit_2() -> None:
    """A typo in OTEL_TRACES_EXPORTER is a configuration error, named, before anything starts."""
    env = {"OTEL_TRACES_EXPORTER": "jaegr"}
    async with Process("serve", "--emulator", "--listen", "127.0.0.1:0", env=env) as server:
        code, out, err = await server.finish()
    assert code == 2
    assert "OTEL_TRACES_EXPORTER" in err
    assert out == ""


def _config(argv: list[str], env: dict[str, str]) -> Any:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return config_from_args(parser.parse_args(argv), {"DASHSCOPE_API_KEY": "sk-x", **env})


def test_log_format_from_flag_and_environment() -> None:
    """--log-format beats COSYVOICE_SIDECAR_LOG_FORMAT; default text; anything else refused."""
    assert _config([], {}).log_format == "text"
    assert _config([], {"COSYVOICE_SIDECAR_LOG_FORMAT": "json"}).log_format == "json"
    flag_wins = _config(["--log-format", "text"], {"COSYVOICE_SIDECAR_LOG_FORMAT": "json"})
    assert flag_wins.log_format == "text"
    with pytest.raises(ConfigError, match="COSYVOICE_SIDECAR_LOG_FORMAT"):
        _config([], {"COSYVOICE_SIDECAR_LOG_FORMAT": "xml"})

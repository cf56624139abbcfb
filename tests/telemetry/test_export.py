"""Choosing exporters from the standard OTEL_* variables, and exporting for real."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import socket
import urllib.error
import urllib.request

import pytest

from sidecar.config import ConfigError
from sidecar.telemetry import ExportSettings, Telemetry, telemetry_from_env
from tests.helpers import eventually
from tests.telemetry.otlp_receiver import otlp_receiver, span_attributes

_OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads the process environment: start every test without OTEL_* set."""
    for name in _OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_nothing_configured_means_everything_off() -> None:
    """No exporter and no endpoint: the shared no-op telemetry, nothing installed."""
    assert ExportSettings.from_env({}) == ExportSettings()
    assert telemetry_from_env({}) is Telemetry.disabled()
    assert not Telemetry.disabled().enabled


def test_an_otlp_endpoint_alone_turns_on_otlp_for_both_signals() -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT implies the otlp exporter (over gRPC) for traces and metrics."""
    settings = ExportSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert settings.traces == ("otlp",)
    assert settings.metrics == ("otlp",)
    assert settings.describe() == "traces otlp/grpc, metrics otlp/grpc"
    only_traces = ExportSettings.from_env(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317/"}
    )
    assert only_traces.traces == ("otlp",)
    assert only_traces.metrics == ()


def test_exporter_lists_none_and_sdk_disabled() -> None:
    """Comma lists are read in order; none wins; OTEL_SDK_DISABLED turns everything off."""
    env = {
        "OTEL_TRACES_EXPORTER": "console, otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
    }
    settings = ExportSettings.from_env(env)
    assert settings.traces == ("console", "otlp")
    assert settings.metrics == ()
    assert ExportSettings.from_env({**env, "OTEL_SDK_DISABLED": "true"}) == ExportSettings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_METRICS_EXPORTER": "otlp,zipkin"}, "OTEL_METRICS_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "prometheus"}, "OTEL_TRACES_EXPORTER"),  # metrics only
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], message: str) -> None:
    """A bad value is a ConfigError naming the variable at fault."""
    with pytest.raises(ConfigError, match=message):
        ExportSettings.from_env(env)


def test_otlp_over_http_needs_its_package() -> None:
    """http/protobuf builds when its exporter package is installed, else says which to install."""
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-http"):
            telemetry_from_env(env)
    else:
        telemetry = telemetry_from_env(env)
        assert telemetry.tracing
        telemetry.shutdown()


def test_console_exporter_writes_span_json_to_the_given_stream() -> None:
    """OTEL_TRACES_EXPORTER=console: finished spans are printed as JSON (stderr by default)."""
    out = io.StringIO()
    telemetry = telemetry_from_env({"OTEL_TRACES_EXPORTER": "console"}, console=out)
    assert telemetry.tracing
    assert not telemetry.metering
    with telemetry.connecting("warm", detached=True) as connect:
        connect.opened(7)
    telemetry.shutdown()
    span = json.loads(out.getvalue())
    assert span["name"] == "connect"
    assert span["attributes"]["cosyvoice.connection.id"] == 7
    assert span["attributes"]["cosyvoice.connect.purpose"] == "warm"
    assert span["resource"]["attributes"]["service.name"] == "cosyvoice-sidecar"


def test_the_sdk_sampler_variable_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_TRACES_SAMPLER=always_off: tracing is configured, yet no span is exported."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    out = io.StringIO()
    telemetry = telemetry_from_env({"OTEL_TRACES_EXPORTER": "console"}, console=out)
    with telemetry.connecting("warm", detached=True):
        pass
    telemetry.shutdown()
    assert out.getvalue() == ""


async def test_otlp_grpc_export_reaches_a_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans and metrics travel over real OTLP/gRPC, with OTEL_SERVICE_NAME and headers applied."""
    async with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=speech")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "tts-sidecar-under-test")
        telemetry = telemetry_from_env()
        with telemetry.connecting("warm", detached=True) as connect:
            connect.opened(3)
        await telemetry.aclose()
        await eventually(lambda: bool(receiver.spans()), what="a span reaches the receiver")
    ((resource, span),) = receiver.spans()
    assert resource["service.name"] == "tts-sidecar-under-test"
    assert span.name == "connect"
    assert span_attributes(span)["cosyvoice.connection.id"] == 3
    assert ("x-tenant", "speech") in receiver.metadata[0]
    assert "cosyvoice.pool.connection.create_time" in receiver.metric_names()


async def _span_batches(monkeypatch: pytest.MonkeyPatch, spans: int) -> list[int]:
    """Export ``spans`` spans over OTLP/gRPC; return how many each export request carried."""
    async with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        telemetry = telemetry_from_env()
        for number in range(spans):
            with telemetry.connecting("warm", detached=True) as connect:
                connect.opened(number)
        await telemetry.aclose()
        await eventually(lambda: len(receiver.spans()) == spans, what=f"{spans} spans exported")
    return [len(spans) for spans in receiver.spans_per_request()]


async def test_spans_are_exported_in_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 spans per export, not the SDK's 512: encoding a batch holds the GIL the streams need."""
    batches = await _span_batches(monkeypatch, 130)
    assert max(batches) <= 64
    assert len(batches) >= 3


async def test_the_sdk_batch_size_variable_still_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_BSP_MAX_EXPORT_BATCH_SIZE, when set, is the SDK's to apply as usual."""
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512")
    batches = await _span_batches(monkeypatch, 130)
    assert max(batches) > 64


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


async def test_prometheus_serves_the_metrics_until_shutdown() -> None:
    """OTEL_METRICS_EXPORTER=prometheus: /metrics on the configured port, gone after aclose."""
    port = _free_port()
    env = {
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
    }
    telemetry = telemetry_from_env(env)
    try:
        assert not telemetry.tracing
        with telemetry.connecting("warm", detached=True) as connect:
            connect.opened(3)
        text = await asyncio.to_thread(_scrape, port)
        assert "cosyvoice_pool_connection_create_time_seconds_count" in text, text[:2000]
    finally:
        await telemetry.aclose()
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_scrape, port)


def test_prometheus_port_must_be_a_port_and_free() -> None:
    """A bad or taken port is a ConfigError naming the variable or the address."""
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_PROMETHEUS_PORT"):
        telemetry_from_env(
            {"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": "http"}
        )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(taken.getsockname()[1]),
        }
        with pytest.raises(ConfigError, match="cannot serve Prometheus metrics"):
            telemetry_from_env(env)

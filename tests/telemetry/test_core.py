"""The disabled Telemetry: shared, stateless, and holding on to nothing."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider

from sidecar.server import SidecarServer
from sidecar.telemetry import TaskReport, Telemetry
from sidecar.telemetry import _names as names
from sidecar.telemetry._instruments import Instruments


async def test_a_server_without_telemetry_leaves_the_shared_instance_untouched(
    sidecar: SidecarServer,
) -> None:
    """Servers built without telemetry share the disabled instance; it keeps no pool alive."""
    assert sidecar.telemetry is Telemetry.disabled()
    assert Telemetry.disabled()._pools == []


def test_disabled_scopes_are_shared_singletons() -> None:
    """Off, every scope is the same do-nothing object: nothing is allocated per call."""
    off = Telemetry.disabled()
    assert off.borrow(lambda: None) is off.borrow(lambda: None)  # type: ignore[arg-type,return-value]
    synthesis = off.synthesis(
        request_id="r", model="m", voice="v", audio_format="pcm", sample_rate=1
    )
    assert synthesis is off.synthesis(
        request_id="s", model="m", voice="v", audio_format="pcm", sample_rate=1
    )
    returning = off.returning(1, kept=True, cancelled=False, error=None)
    assert returning is off.returning(2, kept=False, cancelled=True, error=None)
    assert off.connecting("warm", detached=True) is off.connecting("caller", detached=False)
    with off.borrow(lambda: None) as borrow:  # type: ignore[arg-type,return-value]
        borrow.borrowed(connection_id=1, warm=True, wait_ms=0.0)
    synthesis.end(TaskReport(finished=True, billed_characters=1, audio_bytes=1))
    assert repr(off) == "<Telemetry tracing=off metrics=off>"


def test_our_semantic_convention_names_are_opentelemetrys() -> None:
    """Spelled out in sidecar.telemetry._names, equal to the installed conventions package."""
    from opentelemetry.semconv._incubating.attributes import rpc_attributes
    from opentelemetry.semconv._incubating.metrics import rpc_metrics
    from opentelemetry.semconv.attributes import error_attributes, network_attributes

    from sidecar.telemetry import _names as n

    assert n.RPC_SYSTEM_NAME == rpc_attributes.RPC_SYSTEM_NAME
    assert n.RPC_METHOD == rpc_attributes.RPC_METHOD
    assert n.RPC_RESPONSE_STATUS_CODE == rpc_attributes.RPC_RESPONSE_STATUS_CODE
    assert n.RPC_SERVER_CALL_DURATION == rpc_metrics.RPC_SERVER_CALL_DURATION
    assert n.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert n.NETWORK_PEER_ADDRESS == network_attributes.NETWORK_PEER_ADDRESS
    assert n.NETWORK_PEER_PORT == network_attributes.NETWORK_PEER_PORT


def test_models_named_by_callers_cannot_grow_the_metric_series_without_end() -> None:
    """The first MAX_MODEL_LABELS distinct models keep their name, and the rest are "other",
    however many a caller invents; a model seen before keeps its name."""
    instruments = Instruments(meter_provider=MeterProvider())
    invented = [f"model-{i}" for i in range(names.MAX_MODEL_LABELS + 10)]
    labels = [instruments.model_label(model) for model in invented]
    assert labels[: names.MAX_MODEL_LABELS] == invented[: names.MAX_MODEL_LABELS]
    assert set(labels[names.MAX_MODEL_LABELS :]) == {names.OTHER_MODEL}
    assert instruments.model_label("model-0") == "model-0"

"""Undecodable, absurd or unauthenticated requests: a clean status, no traceback, no task."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.config import Secret
from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from sidecar.telemetry import TraceContextFilter
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles
from tests.timing import scaled

# Every method the sidecar serves, with whether its requests stream.
METHODS = {
    "/cosyvoice.sidecar.v1.Synthesizer/Synthesize": False,
    "/cosyvoice.sidecar.v1.Synthesizer/StreamingSynthesize": True,
    "/cosyvoice.sidecar.v1.SidecarStatus/GetStatus": False,
    "/grpc.health.v1.Health/Check": False,
    "/grpc.health.v1.Health/Watch": False,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": True,
}
CORRUPT = b"\xff\xff\xff\xff"  # not a protobuf message at all
# Field 2 is ``text`` in both Synthesizer requests; field 1 the health check's service.
GARBAGE = (
    [(method, CORRUPT) for method in METHODS]
    + [
        (method, blob)
        for method in list(METHODS)[:2]
        for blob in (b"\x12\x02\xc3\x28", b"\x12\x03\xed\xa0\x80")  # bad UTF-8, a lone surrogate
    ]
    + [("/grpc.health.v1.Health/Check", b"\x0a\x02\xc3\x28")]
)


async def _send_raw(
    address: str, method: str, blob: bytes, *, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    """Send ``blob`` as the request of ``method``; return the status code the call ends with."""
    error = await _refusal(address, method, [blob], metadata=metadata)
    return grpc.StatusCode.OK if error is None else error.code()


async def _refusal(
    address: str,
    method: str,
    blobs: list[bytes],
    *,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.aio.AioRpcError | None:
    """Send ``blobs`` as the requests of ``method`` (one unless it streams); return its error."""

    def identity(data: bytes) -> bytes:
        return data

    async with grpc.aio.insecure_channel(address) as channel:
        if METHODS[method]:

            async def requests() -> AsyncIterator[bytes]:
                for blob in blobs:
                    yield blob

            call = channel.stream_stream(method, identity, identity)(
                requests(), timeout=scaled(5), metadata=metadata
            )
        else:
            (blob,) = blobs
            call = channel.unary_stream(method, identity, identity)(  # type: ignore[assignment]
                blob, timeout=scaled(5), metadata=metadata
            )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc
        return None


def _assert_refused(
    error: grpc.aio.AioRpcError | None,
    code: grpc.StatusCode,
    request_id: str,
    caplog: pytest.LogCaptureFixture,
    *,
    reason: str,
    field: str = "",
) -> None:
    """A refusal like any other status: its ErrorInfo (and BadRequest naming ``field``),
    ``x-request-id`` in the trailers, and one access line naming the request id."""
    assert error is not None
    assert error.code() is code, error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no grpc-status-details-bin"
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details)
    assert (info.reason, info.domain) == (reason, "cosyvoice-sidecar")
    if field:
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details)
        assert [v.field for v in bad.field_violations] == [field]
    assert dict(error.trailing_metadata() or ())["x-request-id"] == request_id
    access = [
        r
        for r in caplog.records
        if r.name == "sidecar.access"
        and getattr(r, "call_fields", {}).get("request_id") == request_id
    ]
    assert len(access) == 1, f"{len(access)} access lines name {request_id}"
    assert access[0].call["grpc_code"] == code.name  # type: ignore[attr-defined]


def _capture_call_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(TraceContextFilter())  # as configure_logging installs it


@pytest.mark.parametrize(("method", "blob"), GARBAGE)
async def test_undecodable_requests_are_invalid_argument_on_every_method_without_traceback(
    sidecar: SidecarServer,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    method: str,
    blob: bytes,
) -> None:
    _capture_call_logs(caplog)
    metadata = (("x-request-id", "req-undecodable-1"),)
    error = await _refusal(sidecar.address, method, [blob], metadata=metadata)
    _assert_refused(
        error,
        grpc.StatusCode.INVALID_ARGUMENT,
        "req-undecodable-1",
        caplog,
        reason="InvalidRequest",
        field="request",
    )
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert emulator.stats.tasks_started == 0


@pytest.mark.parametrize("blob", [CORRUPT, b"\x12\x02\xc3\x28"], ids=["corrupt", "bad-utf8"])
async def test_an_undecodable_later_message_of_a_stream_is_a_refusal_like_any_other(
    sidecar: SidecarServer, emulator: Emulator, caplog: pytest.LogCaptureFixture, blob: bytes
) -> None:
    """The config decodes, the next message does not: the same status, trailer and log line."""
    _capture_call_logs(caplog)
    config = pb.StreamingSynthesizeRequest(config=pb.SynthesisConfig()).SerializeToString()
    method = "/cosyvoice.sidecar.v1.Synthesizer/StreamingSynthesize"
    metadata = (("x-request-id", "req-undecodable-2"),)
    error = await _refusal(sidecar.address, method, [config, blob], metadata=metadata)
    _assert_refused(
        error,
        grpc.StatusCode.INVALID_ARGUMENT,
        "req-undecodable-2",
        caplog,
        reason="InvalidRequest",
        field="request",
    )
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    await assert_pool_settles(sidecar, emulator)


async def test_a_refusal_without_a_request_id_gets_one_in_its_trailers_and_log_line(
    sidecar: SidecarServer, caplog: pytest.LogCaptureFixture
) -> None:
    _capture_call_logs(caplog)
    method = "/cosyvoice.sidecar.v1.Synthesizer/Synthesize"
    error = await _refusal(sidecar.address, method, [CORRUPT])
    assert error is not None
    request_id = dict(error.trailing_metadata() or ()).get("x-request-id", "")
    assert len(str(request_id)) == 32
    _assert_refused(
        error,
        grpc.StatusCode.INVALID_ARGUMENT,
        str(request_id),
        caplog,
        reason="InvalidRequest",
        field="request",
    )


async def test_nesting_deeper_than_the_decoder_allows_is_invalid_argument(
    sidecar: SidecarServer, caplog: pytest.LogCaptureFixture
) -> None:
    """33+ levels once gave UNKNOWN and a traceback per request."""
    _capture_call_logs(caplog)
    method = "/cosyvoice.sidecar.v1.Synthesizer/Synthesize"
    for depth in (33, 60):
        blob = _deep_synthesize_request(depth)
        request_id = f"req-deep-{depth}"
        error = await _refusal(
            sidecar.address, method, [blob], metadata=(("x-request-id", request_id),)
        )
        _assert_refused(
            error,
            grpc.StatusCode.INVALID_ARGUMENT,
            request_id,
            caplog,
            reason="InvalidRequest",
            field="request",
        )
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


@pytest.mark.parametrize("method", [m for m in METHODS if "Health" not in m])
async def test_with_a_token_unauthenticated_garbage_is_unauthenticated_undecoded(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    """The token is checked before anything is decoded; health stays open (and clean)."""
    _capture_call_logs(caplog)
    server = await start_sidecar(auth_token=Secret("s3cret-token"))
    blob = CORRUPT
    for n, sent in enumerate([(), (("authorization", "Bearer wr0ng-token"),)]):
        request_id = f"req-unauthenticated-{n}"
        metadata = (*sent, ("x-request-id", request_id))
        error = await _refusal(server.address, method, [blob], metadata=metadata)
        _assert_refused(
            error, grpc.StatusCode.UNAUTHENTICATED, request_id, caplog, reason="Unauthenticated"
        )
        assert error is not None
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        seen = [error.details() or "", str(status), str(error.trailing_metadata())]
        seen += [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
        for token in ("s3cret-token", "wr0ng-token"):
            assert not [line for line in seen if token in line], token
    health = "/grpc.health.v1.Health/Check"
    assert await _send_raw(server.address, health, blob) is grpc.StatusCode.INVALID_ARGUMENT
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


def _extra(value: Any) -> pb.SynthesisConfig:
    extra = struct_pb2.Struct()
    extra.update({"custom": value})
    return pb.SynthesisConfig(extra_parameters=extra)


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth):
        value = {"next": value}
    return value


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (numbers and lengths here fit one-byte tags)."""
    length = len(payload)
    varint = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([number << 3 | 2]) + bytes(varint) + payload


def _deep_synthesize_request(depth: int) -> bytes:
    """A SynthesizeRequest whose extra_parameters nest ``depth`` Structs, built by hand:
    the Python protobuf runtime refuses to build what the attack sent."""
    struct = b""
    for _ in range(depth):
        value = _field(5, struct)  # Value.struct_value
        struct = _field(1, _field(1, b"next") + _field(2, value))  # Struct.fields entry
    config = _field(14, struct)  # SynthesisConfig.extra_parameters
    return _field(1, config) + _field(2, b"Hello.")  # SynthesizeRequest.config, .text


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (_extra(math.nan), "config.extra_parameters.custom"),
        (_extra(math.inf), "config.extra_parameters.custom"),
        (_extra(-math.inf), "config.extra_parameters.custom"),
        (_extra(_nested(12)), "config.extra_parameters"),
        (_extra("x" * 20_000), "config.extra_parameters"),
        (pb.SynthesisConfig(language_hints=["x" * 100_000]), "config.language_hints"),
        (pb.SynthesisConfig(language_hints=["zh"] * 9), "config.language_hints"),
        (pb.SynthesisConfig(instruction="happy\x00"), "config.instruction"),
        (pb.SynthesisConfig(model="../../etc/passwd"), "config.model"),
        (pb.SynthesisConfig(voice="a voice"), "config.voice"),
        (pb.SynthesisConfig(voice="v" * 129), "config.voice"),
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "nested-12",
        "extra-20k",
        "hint-100k",
        "hints-9",
        "instruction-nul",
        "model-path",
        "voice-space",
        "voice-long",
    ],
)
async def test_absurd_config_is_invalid_argument_naming_the_field(
    client: AsyncSynthesizerClient,
    sidecar: SidecarServer,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    config: pb.SynthesisConfig,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.synthesize("Hello.", config)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert emulator.stats.tasks_started == 0
    await assert_pool_settles(sidecar, emulator)

"""Raw bytes as requests, to every method the sidecar serves: a clean status, never a traceback.

The bytes are random, or a valid request of the method cut short, with a
byte flipped or with garbage appended; streaming methods get up to three
such messages. Whatever decodes is served as usual; whatever does not is
INVALID_ARGUMENT. The health Watch streams for as long as it is watched: the
test reads its first answer and hangs up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from tests.fuzz.checks import LogWindow, check_status, still_exact
from tests.fuzz.strategies import (
    blobs,
    configs,
    deep_configs,
    length_delimited,
    request_sequences,
    texts,
)
from tests.timing import scaled

WATCH: Final = "/grpc.health.v1.Health/Watch"


def _serialized(messages: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return messages.map(lambda m: m.SerializeToString())


# Every method, whether its requests stream, and what a valid request of it looks like.
METHODS: Final[dict[str, tuple[bool, st.SearchStrategy[bytes]]]] = {
    "/cosyvoice.sidecar.v1.Synthesizer/Synthesize": (
        False,
        st.one_of(
            _serialized(st.builds(pb.SynthesizeRequest, text=texts(), config=configs())),
            deep_configs().map(
                lambda config: length_delimited(1, config) + length_delimited(2, b"Hi.")
            ),
        ),
    ),
    "/cosyvoice.sidecar.v1.Synthesizer/StreamingSynthesize": (
        True,
        st.one_of(
            _serialized(request_sequences().map(lambda requests: requests[0])),
            deep_configs().map(lambda config: length_delimited(1, config)),
        ),
    ),
    "/cosyvoice.sidecar.v1.SidecarStatus/GetStatus": (False, st.just(b"")),
    "/grpc.health.v1.Health/Check": (
        False,
        _serialized(st.builds(health_pb2.HealthCheckRequest, service=st.text(max_size=40))),
    ),
    WATCH: (
        False,
        _serialized(st.builds(health_pb2.HealthCheckRequest, service=st.text(max_size=40))),
    ),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": (
        True,
        _serialized(
            st.one_of(
                st.builds(
                    reflection_pb2.ServerReflectionRequest, list_services=st.text(max_size=8)
                ),
                st.builds(
                    reflection_pb2.ServerReflectionRequest,
                    file_containing_symbol=st.text(max_size=60),
                ),
            )
        ),
    ),
}


def _identity(data: bytes) -> bytes:
    return data


async def _send_raw(
    address: str, method: str, messages: list[bytes]
) -> tuple[grpc.StatusCode, str]:
    """Send ``messages`` as the method's requests; return the status the call ends with."""
    streaming = METHODS[method][0]
    async with grpc.aio.insecure_channel(address) as channel:
        call: Any
        if streaming:

            async def requests() -> AsyncIterator[bytes]:
                for message in messages:
                    yield message

            call = channel.stream_stream(method, _identity, _identity)(
                requests(), timeout=scaled(30)
            )
        else:
            call = channel.unary_stream(method, _identity, _identity)(
                messages[0], timeout=scaled(30)
            )
        try:
            async for _ in call:
                if method == WATCH:  # an endless stream: one answer is all it gives
                    call.cancel()
                    return grpc.StatusCode.OK, "watched"
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@st.composite
def _raw_calls(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    method = draw(st.sampled_from(sorted(METHODS)))
    streaming, valid = METHODS[method]
    count = draw(st.integers(1, 3)) if streaming else 1
    return method, [draw(blobs(valid)) for _ in range(count)]


@settings(max_examples=900)
@given(raw=_raw_calls())
async def test_raw_bytes_on_every_method_get_a_clean_status(
    sidecar: SidecarServer,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    raw: tuple[str, list[bytes]],
) -> None:
    """Never UNKNOWN or INTERNAL from the sidecar, no traceback, and the next call exact."""
    caplog.set_level(logging.INFO)
    emulator.update_knobs(ms_per_character=0.5)
    window = LogWindow(caplog)
    method, messages = raw
    code, details = await _send_raw(sidecar.address, method, messages)
    answered = check_status(code, details, window)
    event(f"{method.rsplit('/', 1)[1]}: {answered.name if answered else 'client INTERNAL'}")
    assert not window.problems(), window.problems()
    await still_exact(sidecar, emulator)

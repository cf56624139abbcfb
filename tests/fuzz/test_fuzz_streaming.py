"""Any sequence of well-formed but hostile StreamingSynthesize requests gets a clean answer.

Configs anywhere and repeated, text after finish, requests with nothing set,
empty and huge text in any script, extreme and non-finite numbers, deep and
hostile extra_parameters: the status is never UNKNOWN or INTERNAL, no call
hangs, the log has no traceback or ERROR, a successful call's audio is exactly
the upstream's, and the next ordinary call still is.
"""

from __future__ import annotations

import logging

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from hypothesis import event, given, settings

from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from tests.fuzz.checks import LogWindow, check_status, still_exact
from tests.fuzz.strategies import request_sequences
from tests.helpers import eventually, sha256, task_record
from tests.timing import scaled


@settings(max_examples=700)
@given(requests=request_sequences())
async def test_any_request_sequence_gets_a_clean_answer(
    sidecar: SidecarServer,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    requests: list[pb.StreamingSynthesizeRequest],
) -> None:
    """Clean status, clean log, exact audio if it succeeded, and the next call exact."""
    caplog.set_level(logging.INFO)
    emulator.update_knobs(ms_per_character=0.5)  # even 200,000 characters stay small audio
    window = LogWindow(caplog)
    audio = bytearray()
    task_id = ""
    code, details = grpc.StatusCode.OK, ""
    async with AsyncSynthesizerClient(sidecar.address, retry=False) as client:
        call = client._stub.StreamingSynthesize(iter(requests), timeout=scaled(30))
        try:
            async for response in call:
                task_id = task_id or response.started.task_id
                audio += response.audio.data
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
    answered = check_status(code, details, window)
    event(f"answered {answered.name if answered else 'by the client library'}")
    if requests[0].WhichOneof("request") != "config":
        # Refused by the sidecar; unless gRPC itself refused a message over 1 MiB first.
        too_large = code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
        assert too_large or answered is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    if code is grpc.StatusCode.OK and task_id:
        await eventually(lambda: task_record(emulator, task_id).outcome != "running")
        record = task_record(emulator, task_id)
        assert sha256(audio) == record.audio_sha256
        # Finished; or nothing to speak, so no finish-task (DashScope refuses a
        # task without text) and the socket closed instead.
        spoke_nothing = record.outcome == "abandoned" and record.characters == 0 and not audio
        assert record.outcome == "finished" or spoke_nothing, record
    assert not window.problems(), window.problems()
    await still_exact(sidecar, emulator)

"""A caller that reads slowly or pauses holds the upstream back; it is never blamed on DashScope.

While the caller does not read, the sidecar stops reading the upstream, so the
upstream deadlines (stall, finish) must not count that time; a caller that
stays away past its own bound gets a status that blames it.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.emulator import Emulator
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles, sha256, task_record, upstream_stalled
from tests.timing import scaled

# ~300 s of 48 kHz audio (~28 MB), sent as fast as TCP allows: far more than
# every buffer between the emulator and the caller holds.
LONG = "Backpressure keeps memory bounded. " * 143
CONFIG = pb.SynthesisConfig(sample_rate_hz=48000)


async def test_a_reader_paused_twice_the_stall_timeout_gets_every_byte(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """The upstream is silent because the caller paused: not a stall, no error."""
    stall = scaled(0.5)
    server = await start_sidecar(stall_timeout_s=stall, caller_read_timeout_s=scaled(10))
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream(CONFIG)
        await stream.send_text(LONG)
        await stream.finish()
        responses = aiter(stream)
        received = bytearray()
        started = await anext(responses)
        task_id = started.started.task_id
        for _ in range(3):
            received += (await anext(responses)).audio.data
        sent = await upstream_stalled(emulator, task_id)
        await asyncio.sleep(2 * stall)  # well past the stall bound, while the upstream waits
        async for response in responses:
            received += response.audio.data
    record = task_record(emulator, task_id)
    assert record.outcome == "finished"
    assert sent < record.audio_bytes  # the upstream really waited for the caller
    assert sha256(received) == record.audio_sha256
    await assert_pool_settles(server, emulator)


async def test_a_slow_reader_of_a_long_answer_outlasts_the_finish_timeout(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Reading slower than the audio comes: task-finished waits on the caller, which is fine."""
    server = await start_sidecar(
        finish_timeout_s=scaled(1.0), stall_timeout_s=scaled(1.0), caller_read_timeout_s=scaled(10)
    )
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream(CONFIG)
        await stream.send_text(LONG)
        await stream.finish()
        received = bytearray()
        task_id = ""
        loop = asyncio.get_running_loop()
        started = loop.time()
        async for response in stream:
            task_id = task_id or response.started.task_id
            received += response.audio.data
            if response.HasField("audio") and loop.time() - started < scaled(3.0):
                await asyncio.sleep(scaled(0.05))  # a caller playing as it receives
    assert loop.time() - started > scaled(1.0)  # longer than the finish bound
    record = task_record(emulator, task_id)
    assert record.outcome == "finished"
    assert sha256(received) == record.audio_sha256


async def test_a_caller_paused_past_its_own_bound_is_blamed_not_dashscope(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Past --caller-read-timeout: FAILED_PRECONDITION (CallerStalled), no RetryInfo."""
    server = await start_sidecar(caller_read_timeout_s=scaled(0.5), stall_timeout_s=scaled(0.3))
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream(CONFIG)
        await stream.send_text(LONG)
        await stream.finish()
        responses = aiter(stream)
        task_id = (await anext(responses)).started.task_id
        await upstream_stalled(emulator, task_id)
        await asyncio.sleep(scaled(1.5))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in responses:
                pass
    error = info.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "unread" in (error.details() or "")
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    reason = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(reason) for d in status.details)
    assert reason.reason == "CallerStalled"
    assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    await assert_pool_settles(server, emulator)

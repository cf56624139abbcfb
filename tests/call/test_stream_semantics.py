"""Calls with slow, silent, impatient or too many callers, and with a stalling upstream."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.emulator import Emulator
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles, eventually, sha256, task_record, upstream_stalled
from tests.processes import Process
from tests.timing import scaled


async def _error_of(call: asyncio.Future[object] | object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def test_silent_caller_is_ended_before_dashscope_would(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """No text and no finish past the idle bound: FAILED_PRECONDITION saying so; task cancelled."""
    server = await start_sidecar(caller_idle_timeout_s=scaled(0.3))
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream()
        await stream.send_text("Half a sentence and then")
        error = await _error_of(stream.collect())
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no text and no finish" in (error.details() or "")
    await eventually(lambda: emulator.stats.tasks[-1].outcome == "abandoned", what="stopped")
    await assert_pool_settles(server, emulator)


async def test_stream_without_a_config_is_ended(start_sidecar: StartSidecar) -> None:
    """A stream opened but silent is ended after the idle bound, before it borrows anything."""
    server = await start_sidecar(caller_idle_timeout_s=scaled(0.3))
    async with AsyncSynthesizerClient(server.address) as client:
        call = client._stub.StreamingSynthesize(timeout=scaled(10))
        error = await _error_of(call.read())
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no config within" in (error.details() or "")
    assert server.pool.status().busy == 0


async def test_first_audio_timeout(start_sidecar: StartSidecar, emulator: Emulator) -> None:
    """Upstream silent after finish: UNAVAILABLE naming the first-audio bound, no hang."""
    server = await start_sidecar(first_audio_timeout_s=scaled(0.3))
    emulator.update_knobs(first_packet_delay_s=scaled(3))
    async with AsyncSynthesizerClient(server.address) as client:
        error = await _error_of(client.synthesize("Hello."))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "no audio within" in (error.details() or "")
    emulator.update_knobs(first_packet_delay_s=0)
    await assert_pool_settles(server, emulator)


async def test_stall_between_frames(start_sidecar: StartSidecar, emulator: Emulator) -> None:
    """Audio started, then the upstream stalls: UNAVAILABLE naming the stall bound, in time.

    The stall bound is far nearer than the first-audio bound armed before it;
    the call must end at the stall bound, not when the first-audio one passes.
    """
    server = await start_sidecar(stall_timeout_s=scaled(0.3), first_audio_timeout_s=scaled(20))
    emulator.update_knobs(realtime_factor=20.0)  # each 100 ms chunk takes 2 s
    started = time.monotonic()
    async with AsyncSynthesizerClient(server.address) as client:
        error = await _error_of(client.synthesize("A sentence long enough for several chunks."))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "stalled" in (error.details() or "")
    assert time.monotonic() - started < scaled(10)
    await assert_pool_settles(server, emulator)


async def test_admission_control(start_sidecar: StartSidecar, emulator: Emulator) -> None:
    """Past max_streams: RESOURCE_EXHAUSTED with RetryInfo; the admitted call completes."""
    server = await start_sidecar(max_streams=1)
    emulator.update_knobs(realtime_factor=1.0)
    async with AsyncSynthesizerClient(server.address, retry=False) as client:
        stream = await client.open_stream()
        await stream.send_text("The one admitted call.")
        await stream.finish()
        first = await anext(aiter(stream))
        assert first.HasField("started")
        error = await _error_of(client.synthesize("One too many."))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        emulator.update_knobs(realtime_factor=0.0)
        result = await stream.collect()
    assert result.completed.audio_bytes > 0
    await assert_pool_settles(server, emulator)


async def test_request_id_in_initial_metadata(
    client: AsyncSynthesizerClient, emulator: Emulator
) -> None:
    """The x-request-id comes back in initial metadata and in Started; one is made if absent."""
    call = client._stub.Synthesize(
        pb.SynthesizeRequest(text="Hi."), metadata=(("x-request-id", "abc-123"),)
    )
    metadata = await call.initial_metadata()
    assert dict(metadata)["x-request-id"] == "abc-123"
    first = await call.read()
    assert isinstance(first, pb.SynthesizeResponse)
    assert first.started.request_id == "abc-123"
    while await call.read() is not grpc.aio.EOF:
        pass
    fresh = await client.synthesize("Hi.")
    assert len(fresh.started.request_id) == 32


async def test_cancel_while_waiting_for_a_connection(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """A call cancelled in the pool's queue leaves no waiter and opens nothing."""
    server = await start_sidecar(pool_min_idle=1, pool_max_size=1, acquire_timeout_s=scaled(5))
    emulator.update_knobs(realtime_factor=1.0)
    async with AsyncSynthesizerClient(server.address) as client:
        busy = asyncio.create_task(client.synthesize("Holding the only connection."))
        await eventually(lambda: server.pool.status().busy == 1, what="connection busy")
        waiting = client._stub.Synthesize(pb.SynthesizeRequest(text="Queued."))
        await eventually(lambda: server.pool.status().waiters == 1, what="queued")
        waiting.cancel()
        await eventually(lambda: server.pool.status().waiters == 0, what="queue empty")
        emulator.update_knobs(realtime_factor=0.0)
        await busy
    assert emulator.stats.connections_opened == 1
    await assert_pool_settles(server, emulator)


async def test_cancel_before_task_started_closes_the_connection(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Cancelled before task-started (nothing may be sent yet): the socket is closed, not reused."""
    server = await start_sidecar()
    emulator.update_knobs(start_delay_s=scaled(1.0))
    async with AsyncSynthesizerClient(server.address) as client:
        call = client._stub.Synthesize(pb.SynthesizeRequest(text="Never starts."))
        await eventually(lambda: emulator.stats.running_tasks == 1, what="run-task received")
        call.cancel()
    await eventually(lambda: emulator.stats.tasks[-1].outcome == "abandoned", what="abandoned")
    emulator.update_knobs(start_delay_s=0)
    await assert_pool_settles(server, emulator)


async def test_cancel_after_finish_sent(start_sidecar: StartSidecar, emulator: Emulator) -> None:
    """Cancelled after finish, mid-audio: the socket is closed at once, the pool replaces it."""
    server = await start_sidecar(pool_min_idle=1, pool_max_size=1)
    emulator.update_knobs(realtime_factor=1.0)
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream()
        await stream.send_text("Finished text that is still being spoken.")
        await stream.finish()
        async for response in stream:
            if response.HasField("audio"):
                break
        stream.cancel()
        await eventually(lambda: emulator.stats.tasks[-1].outcome == "abandoned", what="stopped")
        emulator.update_knobs(realtime_factor=0.0)
        await assert_pool_settles(server, emulator)
        again = await client.synthesize("A fresh socket.")
    assert len(again.audio) == again.completed.audio_bytes > 0
    assert emulator.stats.connections_opened == 2
    assert emulator.stats.client_close_codes.get(1000) == 1


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_slow_reader_pushes_back_and_memory_stays_bounded(emulator: Emulator) -> None:
    """A caller pausing mid-stream stalls the upstream; the sidecar's RSS barely moves."""
    async with Process(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        emulator.url,
        env={"DASHSCOPE_API_KEY": "sk-test"},
    ) as server:
        address = (await server.expect(r"serving on (\S+)")).group(1)
        assert server.proc is not None
        async with AsyncSynthesizerClient(address) as client:
            await client.synthesize("Warm up the code paths first.")
            baseline = _rss_mib(server.proc.pid)
            # ~300 s of 48 kHz audio (~28 MB) that the emulator sends as fast as TCP
            # allows: far more than every buffer between it and us holds.
            stream = await client.open_stream(pb.SynthesisConfig(sample_rate_hz=48000))
            await stream.send_text("Backpressure keeps memory bounded. " * 143)
            await stream.finish()
            responses = aiter(stream)
            received = bytearray()
            task_id = ""
            for _ in range(5):  # read a few messages, then stop reading for a while
                response = await anext(responses)
                task_id = task_id or response.started.task_id
                received += response.audio.data
            stalled = await upstream_stalled(emulator, task_id)
            grown = _rss_mib(server.proc.pid) - baseline
            async for response in responses:
                received += response.audio.data
        assert await server.stop() == 0
    record = task_record(emulator, task_id)
    assert record.outcome == "finished"
    assert stalled < record.audio_bytes  # the upstream waited for the caller
    assert grown < 8, f"sidecar RSS grew {grown:.1f} MiB while the caller paused"
    assert sha256(received) == record.audio_sha256

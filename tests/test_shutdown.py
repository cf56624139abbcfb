"""SIGTERM as Kubernetes sends it: health first, then drain, then close every socket with 1000."""

from __future__ import annotations

import asyncio

import grpc
from cosyvoice_sidecar_client import AsyncSynthesizerClient, SynthesisResult
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.emulator import Emulator
from tests.helpers import eventually
from tests.processes import Process
from tests.timing import scaled

TEXT = "A sentence spoken at real-time pace, so the stream is still running."


async def _start(emulator: Emulator, grace: float) -> Process:
    return Process(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        emulator.url,
        "--pool-min-idle",
        "2",
        "--pool-max-size",
        "12",
        "--drain-grace",
        str(grace),
        env={"DASHSCOPE_API_KEY": "sk-test"},
    )


async def _watch_health(address: str, seen: list[int]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            async for response in stub.Watch(health_pb2.HealthCheckRequest()):  # type: ignore[attr-defined]
                seen.append(int(response.status))
        except grpc.aio.AioRpcError:
            pass  # the server went away after the drain: expected


async def test_sigterm_drains_running_streams(emulator: Emulator) -> None:
    """10 streams running at SIGTERM all complete; NOT_SERVING first; every socket closed 1000."""
    emulator.update_knobs(realtime_factor=0.5)
    async with await _start(emulator, grace=scaled(15)) as server:
        address = (await server.expect(r"serving on (\S+)")).group(1)
        health: list[int] = []
        watcher = asyncio.create_task(_watch_health(address, health))
        await eventually(lambda: health[-1:] == [1], what="SERVING seen")
        async with AsyncSynthesizerClient(address) as client:
            calls = [asyncio.create_task(client.synthesize(TEXT)) for _ in range(10)]
            await eventually(lambda: emulator.stats.running_tasks == 10, what="10 running")
            assert server.proc is not None
            server.proc.terminate()
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, SynthesisResult) for r in results), results
        assert all(r.completed.audio_bytes > 0 for r in results if isinstance(r, SynthesisResult))
        code, _, log = await server.finish()
        await asyncio.wait_for(watcher, scaled(5))
    assert code == 0, log
    assert health[-1] == 2  # NOT_SERVING was announced before the server went away
    assert all(t.outcome == "finished" for t in emulator.stats.tasks)
    await eventually(lambda: emulator.stats.connections_open == 0, what="all sockets closed")
    stats = emulator.stats
    assert stats.client_close_codes[1000] == stats.connections_opened, stats.client_close_codes


async def test_sigterm_past_the_grace_ends_streams_with_unavailable(emulator: Emulator) -> None:
    """Streams still running when the grace expires end UNAVAILABLE, cancelled upstream."""
    emulator.update_knobs(realtime_factor=1.0)
    async with await _start(emulator, grace=scaled(0.5)) as server:
        address = (await server.expect(r"serving on (\S+)")).group(1)
        async with AsyncSynthesizerClient(address) as client:
            long_text = TEXT * 6  # ~20 s of audio at real-time pace
            calls = [asyncio.create_task(client.synthesize(long_text)) for _ in range(3)]
            await eventually(lambda: emulator.stats.running_tasks == 3, what="3 running")
            assert server.proc is not None
            server.proc.terminate()
            results = await asyncio.gather(*calls, return_exceptions=True)
        code, _, log = await server.finish()
    assert code == 0, log
    for result in results:
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert result.code() is grpc.StatusCode.UNAVAILABLE
        assert "drain grace" in (result.details() or "")
    await eventually(lambda: emulator.stats.connections_open == 0, what="all sockets closed")
    assert all(t.outcome in ("abandoned", "finished") for t in emulator.stats.tasks)
    stats = emulator.stats
    assert stats.client_close_codes[1000] == stats.connections_opened, stats.client_close_codes


async def test_a_second_sigterm_ends_running_calls_at_once(emulator: Emulator) -> None:
    """The drain grace is long; a second signal cuts it short, sockets still closed with 1000."""
    emulator.update_knobs(realtime_factor=1.0)
    async with await _start(emulator, grace=scaled(60)) as server:
        address = (await server.expect(r"serving on (\S+)")).group(1)
        async with AsyncSynthesizerClient(address) as client:
            calls = [asyncio.create_task(client.synthesize(TEXT * 6)) for _ in range(3)]
            await eventually(lambda: emulator.stats.running_tasks == 3, what="3 running")
            assert server.proc is not None
            loop = asyncio.get_running_loop()
            server.proc.terminate()
            await asyncio.sleep(scaled(0.5))  # draining: the calls go on
            assert not any(call.done() for call in calls)
            hurried = loop.time()
            server.proc.terminate()
            results = await asyncio.gather(*calls, return_exceptions=True)
        code, _, log = await server.finish()
        elapsed = loop.time() - hurried
    assert code == 0, log
    assert elapsed < scaled(10)  # not the 60 s grace
    assert "second signal" in log
    for result in results:
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert result.code() is grpc.StatusCode.UNAVAILABLE
    await eventually(lambda: emulator.stats.connections_open == 0, what="all sockets closed")
    stats = emulator.stats
    assert stats.client_close_codes[1000] == stats.connections_opened, stats.client_close_codes

"""Request ids, and a slow reader's backpressure on the upstream.

The other behaviours of slow, silent, impatient or too many callers and of a
stalling upstream are rows of the fault matrix (tests/faults/test_fault_matrix.py).
"""

from __future__ import annotations

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.emulator import Emulator
from tests.helpers import sha256, task_record, upstream_stalled
from tests.processes import Process


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

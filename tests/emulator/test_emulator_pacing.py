"""Paced audio end to end: the schedule, many tasks at once, live digests, flow control."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import statistics
import time
from collections.abc import Callable

import pytest

from sidecar.emulator import AudioSpec, Emulator, EmulatorStats, task_audio
from sidecar.emulator.audio import chunk_size
from tests.emulator.peer import Peer, Transcript
from tests.timing import scaled

MS_PER_CHAR = 60.0


async def test_paced_frames_follow_an_absolute_schedule(emulator: Emulator) -> None:
    """Frame k never leaves before k x chunk x factor after the text arrived, nor much later."""
    emulator.update_knobs(realtime_factor=0.5, chunk_ms=20)  # a frame every 10 ms
    arrivals: list[float] = []
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        sent = time.monotonic()  # the emulator cannot start the audio before this
        await peer.text("t1", "Pacing keeps its time.")  # 22 x 60 ms = 1320 ms: 66 frames
        await peer.finish("t1")
        while True:
            frame = await peer.recv()
            if isinstance(frame, bytes):
                arrivals.append(time.monotonic())
            elif frame["header"]["event"] == "task-finished":
                break
    assert len(arrivals) == 66
    for k, arrived in enumerate(arrivals):
        early = sent + k * 0.010 - arrived
        assert early <= 0, f"frame {k} came {early:.4f} s early"
    assert arrivals[-1] <= sent + 65 * 0.010 + scaled(0.5)  # nor much later
    # The schedule is absolute, so lateness does not build up frame after frame:
    # the last frames are as late as the first ones (medians, robust to hiccups).
    lateness = sorted(arrived - k * 0.010 for k, arrived in enumerate(arrivals))
    late = [arrived - k * 0.010 - lateness[0] for k, arrived in enumerate(arrivals)]
    drift = statistics.median(late[-10:]) - statistics.median(late[:10])
    assert drift < scaled(0.015), f"pacing drifted {drift * 1000:.1f} ms over {len(late)} frames"


def _valid_pairs(transcript: Transcript) -> bool:
    shape = transcript.shape()
    return all(
        (name != "synthesis" or shape[i + 1] == "audio")
        and (name != "audio" or shape[i - 1] == "synthesis")
        for i, name in enumerate(shape)
    )


async def test_many_paced_tasks_at_once_are_byte_exact(emulator: Emulator) -> None:
    """Twenty paced tasks sharing the pacer: exact audio and frame sizes, pairs in order."""
    emulator.update_knobs(realtime_factor=0.1, chunk_ms=40)
    formats = ("pcm", "wav", "mp3", "opus")
    texts = ("First sentence here. Second one!", "Another task speaks.")

    async def one(i: int) -> tuple[int, Transcript]:
        async with Peer.connect(emulator) as peer:
            params = {"format": formats[i % 4], "sample_rate": 22050, "seed": i}
            return i, await peer.synthesize(f"t{i}", texts[i % 2], **params)

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), scaled(20))
    stats = await emulator.wait_for(lambda s: s.running_tasks == 0, scaled(5))
    for i, transcript in results:
        format_ = formats[i % 4]
        ends = [e["output"]["original_text"] for e in transcript.sentences("sentence-end")]
        expected = task_audio(ends, AudioSpec(format_, 22050, seed=i), MS_PER_CHAR)
        assert transcript.audio == expected, f"task {i} ({format_})"
        assert _valid_pairs(transcript)
        size = chunk_size(format_, 22050, 40)
        frames = transcript.binary_frames
        if format_ == "wav":
            frames = [frames[0][44:], *frames[1:]]
        assert max(len(f) for f in frames) == size
        record = stats.task(f"t{i}")
        assert record is not None
        assert record.audio_sha256 == hashlib.sha256(expected).hexdigest()


def _sent_some(task_id: str) -> Callable[[EmulatorStats], bool]:
    def predicate(stats: EmulatorStats) -> bool:
        record = stats.task(task_id)
        return record is not None and record.audio_bytes > 0

    return predicate


async def test_a_snapshot_mid_task_hashes_exactly_what_was_sent(emulator: Emulator) -> None:
    """While a task runs, stats give the SHA-256 of the audio sent so far, no more, no less."""
    emulator.update_knobs(realtime_factor=1.0, chunk_ms=50)
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        await peer.text("t1", "A sentence long enough to take a few seconds to say.")
        stats = await emulator.wait_for(_sent_some("t1"), scaled(5))
        audio = (await peer.until("audio")).audio + (await peer.until("audio")).audio
        await peer.finish("t1", cancel=True)
        audio += (await peer.until_end("t1")).audio
    during = stats.task("t1")
    assert during is not None
    assert during.outcome == "running"
    assert 0 < during.audio_bytes < len(audio)
    assert during.audio_sha256 == hashlib.sha256(audio[: during.audio_bytes]).hexdigest()


@pytest.mark.parametrize("factor", [0.0, 0.005])
async def test_a_reader_that_stops_stops_the_task(emulator: Emulator, factor: float) -> None:
    """Flow control, paced or not: sending stalls while the client reads nothing, then resumes."""
    # 125 s of 48 kHz audio (12 MB): far more than the socket buffers between us.
    emulator.update_knobs(realtime_factor=factor, chunk_ms=100, ms_per_character=1000)
    text = "x" * 124 + "."
    async with Peer.connect(emulator) as peer:
        sock = peer.ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        await peer.start("t1", sample_rate=48000)
        await peer.text("t1", text)
        await peer.finish("t1")
        stalled = await _stalled_at(emulator, "t1")
        transcript = await peer.until_end("t1", timeout=30)
    expected = task_audio([text], AudioSpec("pcm", 48000), 1000)
    assert 0 < stalled < len(expected)
    assert transcript.audio == expected
    record = emulator.stats.task("t1")
    assert record is not None
    assert (record.audio_bytes, record.audio_sha256) == (
        len(expected),
        hashlib.sha256(expected).hexdigest(),
    )


async def _stalled_at(emulator: Emulator, task_id: str) -> int:
    """Return the bytes sent once sending stopped for 0.3 s."""
    last = -1
    for _ in range(50):
        record = emulator.stats.task(task_id)
        sent = record.audio_bytes if record is not None else 0
        if sent == last and sent > 0:
            return sent
        last = sent
        await asyncio.sleep(scaled(0.3))
    raise AssertionError(f"the emulator never stalled: {emulator.stats.task(task_id)}")

"""Audio batching: later frames merge into fewer chunks, never at the cost of first audio.

The emulator paces 100 ms frames; a 20-character sentence is 1200 ms of audio,
so 12 frames of 4410 bytes at 22050 Hz pcm.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.emulator import Emulator
from sidecar.emulator.audio import chunk_size
from tests.conftest import StartSidecar
from tests.helpers import eventually, sha256, task_record
from tests.timing import scaled

SENTENCE = "Twenty characters ok"  # 20 characters, one sentence
FRAMES = 12
FRAME_BYTES = 4410  # 100 ms of 16-bit mono at 22050 Hz


async def _chunk_sizes(
    start_sidecar: StartSidecar,
    emulator: Emulator,
    *,
    batch_ms: float,
    realtime_factor: float,
    audio_format: pb.AudioFormat.ValueType = pb.AUDIO_FORMAT_PCM,
) -> list[int]:
    """Synthesize SENTENCE; return the size of every audio chunk, checked byte-exact."""
    assert len(SENTENCE) == 20
    emulator.update_knobs(realtime_factor=realtime_factor, chunk_ms=100)
    server = await start_sidecar(audio_batch_ms=batch_ms)
    config = pb.SynthesisConfig(format=audio_format, sample_rate_hz=22050)
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream(config, timeout=scaled(20))
        await stream.send_text(SENTENCE)
        await stream.finish()
        sizes: list[int] = []
        audio = bytearray()
        task_id = ""
        async for response in stream:
            if response.HasField("started"):
                task_id = response.started.task_id
            elif response.HasField("audio"):
                assert response.audio.sequence == len(sizes)
                sizes.append(len(response.audio.data))
                audio += response.audio.data
            elif response.HasField("completed"):
                assert response.completed.audio_chunks == len(sizes)
    record = task_record(emulator, task_id)
    assert record.outcome == "finished"
    assert sha256(audio) == record.audio_sha256, "audio lost, duplicated or reordered"
    return sizes


async def test_later_frames_merge_once_the_caller_is_well_ahead(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """At twice real time the first chunk is one frame and later frames go out merged."""
    sizes = await _chunk_sizes(start_sidecar, emulator, batch_ms=100, realtime_factor=0.5)
    assert sum(sizes) == FRAMES * FRAME_BYTES
    assert sizes[0] == FRAME_BYTES, "the first audio must never wait"
    # Frames come 50 ms apart; from the fourth on, the caller holds 200 ms beyond
    # real time, so 100 ms holds merge about two frames each.
    assert len(sizes) <= FRAMES - 3, sizes
    assert max(sizes) > FRAME_BYTES, sizes


async def test_same_pace_without_batching_sends_every_frame(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """With --audio-batch-ms 0 and a caller that keeps up, one chunk per frame."""
    sizes = await _chunk_sizes(start_sidecar, emulator, batch_ms=0, realtime_factor=0.5)
    assert sizes == [FRAME_BYTES] * FRAMES


async def test_audio_at_real_time_pace_is_never_held(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Frames arriving as fast as they play never leave the caller 2x the hold ahead."""
    sizes = await _chunk_sizes(start_sidecar, emulator, batch_ms=100, realtime_factor=1.0)
    assert sizes == [FRAME_BYTES] * FRAMES


@pytest.mark.parametrize("audio_format", [pb.AUDIO_FORMAT_MP3, pb.AUDIO_FORMAT_OPUS])
async def test_formats_of_unknown_duration_are_never_held(
    start_sidecar: StartSidecar, emulator: Emulator, audio_format: pb.AudioFormat.ValueType
) -> None:
    """mp3 and opus: the sidecar cannot tell how far ahead the caller is, so no hold."""
    sizes = await _chunk_sizes(
        start_sidecar, emulator, batch_ms=100, realtime_factor=0.5, audio_format=audio_format
    )
    # One chunk per upstream frame: none merged (real mp3 has 800-byte frames, 64 kbit/s).
    frame = chunk_size("mp3" if audio_format == pb.AUDIO_FORMAT_MP3 else "opus", 22050, 100)
    assert max(sizes) <= frame, sizes
    assert len(sizes) == math.ceil(sum(sizes) / frame), sizes


async def test_audio_waiting_for_a_slow_caller_merges_only_up_to_the_chunk_bound(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Large frames (2 s of 48 kHz pcm, 192 KB each) pile up while the caller looks away:
    what it then reads is merged into chunks of at most the bound plus one frame, never
    one message of every frame queued (which could pass gRPC's 4 MiB limit), byte-exact."""
    emulator.update_knobs(realtime_factor=0.0, chunk_ms=2000)
    frame = chunk_size("pcm", 48000, 2000)
    server = await start_sidecar(audio_batch_ms=100.0)
    config = pb.SynthesisConfig(format=pb.AUDIO_FORMAT_PCM, sample_rate_hz=48000)
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream(config, timeout=scaled(20))
        await stream.send_text("one long sentence of many words" + " and more words" * 40 + ".")
        await stream.finish()
        responses = aiter(stream)
        task_id = (await anext(responses)).started.task_id
        # The caller reads nothing: the emulator sends until every buffer on the way is
        # full, the call's own queue of frames among them.
        await eventually(
            lambda: task_record(emulator, task_id).audio_bytes >= 8 * frame,
            timeout=10,
            what="eight frames sent",
        )
        await asyncio.sleep(scaled(0.2))
        sizes: list[int] = []
        audio = bytearray()
        async for response in responses:
            if response.HasField("audio"):
                sizes.append(len(response.audio.data))
                audio += response.audio.data
    assert sha256(audio) == task_record(emulator, task_id).audio_sha256
    assert max(sizes) <= 256 * 1024 + frame, sizes
    assert max(sizes) > frame, sizes  # the waiting frames did merge

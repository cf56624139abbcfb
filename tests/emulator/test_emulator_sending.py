"""The emulator's sending path, part by part: frame headers, cached audio, digests, the pacer."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import socket
import struct
import termios
from collections import OrderedDict

import pytest
import soundfile  # type: ignore[import-untyped]
from websockets.frames import Frame, Opcode

from sidecar.emulator import AudioSpec, Emulator, audio
from sidecar.emulator.audio import (
    chunk_size,
    encode,
    pcm_chunks,
    sentence_audio,
    sentence_pcm,
    sentence_samples,
    wav_header,
)
from sidecar.emulator.digest import AudioDigest
from sidecar.emulator.pacer import TICK_S, Pacer
from sidecar.emulator.wire import frame_header
from tests.emulator.peer import Peer
from tests.helpers import eventually, task_record
from tests.timing import scaled


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 4410, 65535, 65536, 100_000])
def test_frame_header_is_what_websockets_would_send(opcode: Opcode, length: int) -> None:
    """Header + payload equal websockets' own serialization of an unmasked frame."""
    payload = bytes(i % 251 for i in range(length))
    expected = Frame(opcode, payload).serialize(mask=False, extensions=[])
    assert frame_header(opcode, length) + payload == expected


@pytest.mark.parametrize(
    ("format_", "width"), [("pcm", 2), ("wav", 2), ("opus", 1), ("mp3-placeholder", 1)]
)
def test_sentence_audio_cut_by_chunk_size_is_the_encoded_chunks(
    format_: str, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slicing the cached sentence every chunk_size bytes gives encode() of each PCM chunk.

    True of the sample formats and the placeholders (mp3 without LAME), not of real mp3.
    """
    if format_ == "mp3-placeholder":
        format_ = "mp3"
        monkeypatch.setattr(audio, "_lame_installed", False)
        # A cache of its own, so no real mp3 is read and no placeholder is left behind.
        monkeypatch.setattr(audio, "_cache", OrderedDict())
    spec = AudioSpec(format_, 22050, seed=5)
    data = sentence_audio("Cut me into frames.", 1, spec, 60)
    assert data == encode(format_, sentence_pcm("Cut me into frames.", 1, spec, 60), 22050)
    assert sentence_audio("Cut me into frames.", 1, spec, 60) is data  # cached
    size = chunk_size(format_, 22050, 30)  # 661 samples: the last frame is shorter
    assert size == 661 * width
    frames = [data[i : i + size] for i in range(0, len(data), size)]
    pcm = sentence_pcm("Cut me into frames.", 1, spec, 60)
    assert frames == [encode(format_, c, 22050) for c in pcm_chunks(pcm, 22050, 30)]
    assert len(frames[-1]) < size


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 44100, 48000])
def test_mp3_is_real_mpeg_audio_of_the_sentence(rate: int) -> None:
    """mp3 decodes (libsndfile's decoder) to the sentence's tone, at its rate and length."""
    assert audio.mp3_is_real(), "lameenc (a dev dependency) is missing: make venv"
    spec = AudioSpec("mp3", rate, volume=50)
    data = sentence_audio("Real audio, decodable.", 0, spec, 60)
    assert data == encode("mp3", sentence_pcm("Real audio, decodable.", 0, spec, 60), rate)
    assert chunk_size("mp3", rate, 100) == 800  # 64 kbit/s
    samples, decoded_rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert decoded_rate == rate
    expected = sentence_samples("Real audio, decodable.", spec, 60)
    # LAME adds its encoder delay and pads the last frame (at most a few frames).
    assert expected <= len(samples) <= expected + 4 * 1152 + 1105
    loud = sum(abs(int(v)) for v in samples) / len(samples)
    assert loud > 2000  # the triangle tone (amplitude 8000), not silence


def test_audio_digest_is_the_sha256_of_every_prefix() -> None:
    """Any prefix, within a piece or on a boundary, hashes like hashlib; caching changes nothing."""
    pieces = [("h", wav_header(16000)), ("a", b"first piece " * 50), ("b", b"second" * 77)]
    stream = b"".join(data for _, data in pieces)
    lengths = [0, 10, 44, 45, 44 + 600, 700, len(stream) - 1, len(stream)]
    for _ in range(2):  # the second round reuses the states cached by the first
        digest = AudioDigest()
        for key, data in pieces:
            digest.append(key, data)
        for length in lengths:
            assert digest.hexdigest(length) == hashlib.sha256(stream[:length]).hexdigest()
    other = AudioDigest()  # same first key, other content after: no false sharing
    other.append("h", wav_header(16000))
    other.append("c", b"different")
    assert other.hexdigest(53) == hashlib.sha256(wav_header(16000) + b"different").hexdigest()
    with pytest.raises(ValueError, match="fewer"):
        other.hexdigest(54)


async def test_pacer_runs_callbacks_in_time_order_never_early() -> None:
    """Callbacks run by due time (ties in call order), at or after it, about one tick late."""
    loop = asyncio.get_running_loop()
    pacer = Pacer()
    ran: list[tuple[int, float]] = []
    done = loop.create_future()
    start = loop.time()
    due = {1: 0.06, 2: 0.02, 3: 0.04, 4: 0.04, 5: 0.0}

    def record(n: int) -> None:
        ran.append((n, loop.time()))
        if n == 6:
            done.set_result(None)
        elif len(ran) == 5:
            pacer.call_at(loop.time() + 0.01, record, 6)  # scheduling from a callback works

    for n, offset in due.items():
        pacer.call_at(start + offset, record, n)
    await asyncio.wait_for(done, scaled(2))
    assert [n for n, _ in ran] == [5, 2, 3, 4, 1, 6]
    for n, at in ran[:5]:
        assert at >= start + due[n]
        assert at <= start + due[n] + TICK_S + scaled(0.05)
    assert len(pacer) == 0


async def test_a_reset_while_the_sending_waits_for_the_buffer_abandons_the_task() -> None:
    """A client stops reading (the emulator's send buffer fills and it waits for it to
    drain), then resets the connection: the wait ends in ConnectionClosed as websockets'
    own send() reports it, so the task is recorded as abandoned, not left "running"."""
    async with Emulator() as emulator, Peer.connect(emulator) as peer:
        emulator.update_knobs(realtime_factor=0.0)  # as fast as TCP takes it
        started = await peer.start("reset", sample_rate=48000)
        assert started["header"]["event"] == "task-started"
        await peer.text("reset", "Backpressure keeps memory bounded. " * 143)  # ~28 MB
        await peer.finish("reset")
        # The peer reads nothing (websockets stops reading past its queue): once the
        # kernel's receive queue stops growing, the emulator is waiting for a drain.
        sock = peer.ws.transport.get_extra_info("socket")
        unread: list[int] = []

        def stalled() -> bool:
            queued = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4)
            unread.append(struct.unpack("i", queued)[0])
            return len(unread) > 20 and 0 < unread[-20] == unread[-1]

        await eventually(stalled, timeout=10, what="the peer's receive queue is full")
        assert task_record(emulator, "reset").outcome == "running"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.ws.transport.abort()  # linger 0: the close sends RST, not FIN
        await eventually(
            lambda: task_record(emulator, "reset").outcome != "running", what="the task ended"
        )
        assert task_record(emulator, "reset").outcome == "abandoned"

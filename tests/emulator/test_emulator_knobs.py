"""The emulator's knobs, fault injection, HTTP control endpoints and counters."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.exceptions import ConnectionClosed

from sidecar.emulator import Emulator, EmulatorKnobs
from sidecar.emulator.task import EMULATOR_DROP
from tests.emulator.peer import Peer, http_get
from tests.timing import scaled


async def _drain(peer: Peer) -> None:
    """Receive until the connection ends (raises ConnectionClosed)."""
    while True:
        await peer.recv()


async def test_throttling_beyond_max_concurrent_tasks(emulator: Emulator) -> None:
    """A run-task beyond max_concurrent_tasks fails with Throttling.RateQuota; later ones pass."""
    emulator.update_knobs(max_concurrent_tasks=1)
    async with Peer.connect(emulator) as busy, Peer.connect(emulator) as other:
        assert (await busy.start("t1"))["header"]["event"] == "task-started"
        refused = await other.start("t2")
        assert refused["header"]["event"] == "task-failed"
        assert refused["header"]["error_code"] == "Throttling.RateQuota"
        assert refused["header"]["error_message"] == (
            "Requests rate limit exceeded, please try again later."
        )
        await busy.finish("t1")
        await busy.until_end("t1")
        third = await busy.synthesize("t3", "Now there is room.")
    assert third.final_event == "task-finished"
    stats = emulator.stats
    assert stats.peak_concurrent_tasks == 1
    assert stats.outcomes == {"finished": 2, "failed": 1}


async def test_fail_start_every_nth_task(emulator: Emulator) -> None:
    """fail_start_every=2: the second task fails at start with fail_code/fail_message."""
    emulator.update_knobs(fail_start_every=2, fail_code="InternalError", fail_message="Oops.")
    async with Peer.connect(emulator) as peer:
        first = await peer.synthesize("t1", "One.")
        failed = await peer.start("t2")
    assert first.final_event == "task-finished"
    assert failed["header"]["event"] == "task-failed"
    assert (failed["header"]["error_code"], failed["header"]["error_message"]) == (
        "InternalError",
        "Oops.",
    )
    record = emulator.stats.task("t2")
    assert record is not None
    assert record.error_code == "InternalError"


async def test_fail_mid_every_nth_task(emulator: Emulator) -> None:
    """fail_mid_every=1: task-failed right after the first audio frame, then close 1000."""
    emulator.update_knobs(fail_mid_every=1, fail_code="InternalError")
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        await peer.text("t1", "Several sentences. Of text. To say.")
        await peer.finish("t1")
        transcript = await peer.until_end("t1")
        with pytest.raises(ConnectionClosed) as info:
            await peer.recv()
    assert transcript.shape() == ["begin", "synthesis", "audio", "task-failed"]
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1000
    record = emulator.stats.task("t1")
    assert record is not None
    assert record.outcome == "failed"
    assert record.audio_bytes == len(transcript.audio)


async def test_drop_mid_every_nth_task(emulator: Emulator) -> None:
    """drop_mid_every=2: the second task's TCP connection is aborted without a close frame."""
    emulator.update_knobs(drop_mid_every=2)
    async with Peer.connect(emulator) as peer:
        await peer.synthesize("t1", "Fine.")
        await peer.start("t2")
        await peer.text("t2", "This one is dropped.")
        with pytest.raises(ConnectionClosed) as info:
            await _drain(peer)
    assert info.value.rcvd is None  # no close frame: an abrupt drop
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    record = stats.task("t2")
    assert record is not None
    assert (record.outcome, record.error_code) == ("abandoned", EMULATOR_DROP)
    assert stats.connections_dropped == 1
    assert stats.running_tasks == 0


async def test_idle_connection_is_closed_with_1000(emulator: Emulator) -> None:
    """Without a task for idle_timeout_s, the server closes the socket with 1000."""
    emulator.update_knobs(idle_timeout_s=scaled(0.2))
    async with Peer.connect(emulator) as peer:
        began = time.monotonic()
        with pytest.raises(ConnectionClosed) as info:
            await peer.recv()
        assert time.monotonic() - began >= 0.15
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1000
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    assert stats.idle_timeout_closes == 1


async def test_idle_timeout_knob_applies_to_open_connections(emulator: Emulator) -> None:
    """Lowering idle_timeout_s while a socket idles closes it without waiting for the old value."""
    async with Peer.connect(emulator) as peer:
        await peer.synthesize("t1", "Busy, then idle.")
        emulator.update_knobs(idle_timeout_s=0.05, drop_idle_silently=True)
        with pytest.raises(ConnectionClosed) as info:
            await peer.recv(timeout=5)
    assert info.value.rcvd is None  # dropped silently: no close frame
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    assert (stats.idle_timeout_closes, stats.connections_dropped) == (1, 1)


async def test_input_timeout_fails_a_silent_task(emulator: Emulator) -> None:
    """No text for input_timeout_s while no audio flows: CLIENT_ERROR request timeout."""
    timeout = round(scaled(0.3), 3)
    emulator.update_knobs(input_timeout_s=timeout)
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        await peer.text("t1", "Spoken at once.")
        transcript = await peer.until_end("t1")
    assert transcript.final["header"]["error_code"] == "CLIENT_ERROR"
    assert (
        transcript.final["header"]["error_message"] == f"request timeout after {timeout:g} seconds."
    )
    assert transcript.sentences()[0]["output"]["original_text"] == "Spoken at once."


async def test_delays_and_real_time_pacing(emulator: Emulator) -> None:
    """start_delay_s, first_packet_delay_s and realtime_factor hold frames back at least so long."""
    emulator.update_knobs(
        start_delay_s=0.1, first_packet_delay_s=0.1, realtime_factor=1.0, chunk_ms=50
    )
    async with Peer.connect(emulator) as peer:
        began = time.monotonic()
        await peer.start("t1")
        started = time.monotonic()
        await peer.text("t1", "Five.")  # 5 chars x 60 ms = 300 ms of audio, 6 frames
        await peer.finish("t1")
        await peer.until("audio")
        first_audio = time.monotonic()
        transcript = await peer.until_end("t1")
        ended = time.monotonic()
    assert started - began >= 0.1
    assert first_audio - started >= 0.1
    assert len(transcript.binary_frames) == 5  # the first frame came before until_end
    assert ended - first_audio >= 0.25  # the last frame is due at 250 ms


async def test_stats_and_knobs_over_http(emulator: Emulator) -> None:
    """GET /_emulator/stats returns the counters; /_emulator/knobs updates and validates."""
    async with Peer.connect(emulator) as peer:
        await peer.synthesize("t1", "Hello.")
    await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    status, stats = await http_get(emulator, "/_emulator/stats")
    assert status == 200
    assert stats["connections_opened"] == 1
    assert stats["connections_open"] == 0
    task = stats["tasks"][0]
    assert {k: task[k] for k in ("task_id", "outcome", "format", "sample_rate", "error_code")} == {
        "task_id": "t1",
        "outcome": "finished",
        "format": "pcm",
        "sample_rate": 16000,
        "error_code": None,
    }
    assert set(task) >= {"connection_id", "model", "voice", "audio_bytes", "audio_sha256"}

    status, knobs = await http_get(
        emulator, "/_emulator/knobs?realtime_factor=0.5&rejected_voices=a,b"
    )
    assert status == 200
    assert knobs["realtime_factor"] == 0.5
    assert knobs["rejected_voices"] == ["a", "b"]
    assert emulator.knobs.rejected_voices == frozenset({"a", "b"})

    status, error = await http_get(emulator, "/_emulator/knobs?chunk_ms=fast")
    assert status == 400
    assert "chunk_ms" in error["error"]
    status, error = await http_get(emulator, "/_emulator/knobs?bogus=1&realtime_factor=2")
    assert status == 400
    assert "bogus" in error["error"]
    assert emulator.knobs.realtime_factor == 0.5  # all or nothing


async def test_counters_follow_connections_exactly(emulator: Emulator) -> None:
    """connections_open counts handshakes until TCP is gone; close codes are counted."""
    async with Peer.connect(emulator) as a, Peer.connect(emulator) as b:
        assert emulator.stats.connections_open == 2
        async with Peer.connect(emulator) as c:
            assert emulator.stats.connections_open == 3
            await c.synthesize("t1", "Hi.")
        await b.ws.close(code=4000)
        await a.synthesize("t2", "Still here.")
        stats = await emulator.wait_for(lambda s: s.connections_open == 1, scaled(5))
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    assert stats.connections_opened == 3
    assert stats.peak_open_connections == 3
    assert stats.client_close_codes == {1000: 2, 4000: 1}


async def test_aclose_closes_clients_with_1000() -> None:
    """Emulator.aclose closes open client sockets with 1000 and stops listening."""
    emulator = Emulator(EmulatorKnobs())
    await emulator.start()
    try:
        async with Peer.connect(emulator) as peer:
            await emulator.aclose()
            with pytest.raises(ConnectionClosed) as info:
                await peer.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1000
        assert emulator.stats.connections_open == 0
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(emulator.host, emulator.port)
    finally:
        await emulator.aclose()


async def test_stalled_peer_is_aborted_after_a_server_close(emulator: Emulator) -> None:
    """A peer that never completes the closing handshake is cut off within ~2 s."""
    emulator.update_knobs(idle_timeout_s=0.05)
    async with asyncio.timeout(scaled(5)):
        reader, writer = await asyncio.open_connection(emulator.host, emulator.port)
        writer.write(
            b"GET /api-ws/v1/inference HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer sk-x\r\n\r\n"
        )
        began = time.monotonic()
        data = await reader.read()  # the 101, the close frame, then EOF when aborted
        elapsed = time.monotonic() - began
        writer.close()
    assert data.startswith(b"HTTP/1.1 101")
    assert b"\x88" in data  # a close frame was sent first
    assert 1.5 <= elapsed <= scaled(4.0)
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    assert stats.client_close_codes == {1006: 1}


def test_non_loopback_host_is_refused() -> None:
    """The emulator binds loopback only unless explicitly allowed."""
    with pytest.raises(ValueError, match="loopback"):
        Emulator(host="0.0.0.0")
    Emulator(host="0.0.0.0", allow_non_loopback=True)  # allowed, not started

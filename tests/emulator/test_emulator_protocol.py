"""The emulator against a raw WebSocket peer: the §6/§7 protocol, frame by frame."""

from __future__ import annotations

import hashlib
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sidecar.emulator import AudioSpec, Emulator, task_audio
from sidecar.emulator.audio import wav_header
from sidecar.protocol import count_characters
from tests.emulator.peer import Peer
from tests.timing import scaled

MS_PER_CHAR = 60.0


async def test_event_order_for_two_sentences(emulator: Emulator) -> None:
    """started, then per sentence begin, (synthesis + audio)+, end; then finished."""
    emulator.update_knobs(chunk_ms=100)
    async with Peer.connect(emulator) as peer:
        started = await peer.start("t1")
        assert started["header"] == {"task_id": "t1", "event": "task-started", "attributes": {}}
        await peer.text("t1", "Hello world. How")
        await peer.text("t1", " are you?")
        await peer.finish("t1")
        transcript = await peer.until_end("t1")
    shape = transcript.shape()
    assert shape[-1] == "task-finished"
    # Collapse the audio pairs: every synthesis is immediately followed by one audio frame.
    for i, name in enumerate(shape):
        if name == "synthesis":
            assert shape[i + 1] == "audio"
        if name == "audio":
            assert shape[i - 1] == "synthesis"
    compact = [n for n in shape if n not in ("synthesis", "audio")]
    assert compact == ["begin", "end", "begin", "end", "task-finished"]
    ends = transcript.sentences("sentence-end")
    assert [e["output"]["original_text"] for e in ends] == ["Hello world.", "How are you?"]
    assert [e["output"]["sentence"]["index"] for e in ends] == [0, 1]
    assert [e["usage"]["characters"] for e in ends] == [12, 25]
    assert transcript.final["payload"]["usage"]["characters"] == 25
    # 12 chars x 60 ms = 720 ms at 100 ms per frame: 8 frames for the first sentence.
    assert shape.index("end") == 1 + 2 * 8


async def test_audio_is_byte_exact_and_recorded(emulator: Emulator) -> None:
    """The audio equals audio.task_audio for the sentences; stats hold its size and SHA-256."""
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize("t1", "One. Two!", sample_rate=24000, seed=3)
    spec = AudioSpec("pcm", 24000, seed=3)
    assert transcript.audio == task_audio(["One.", "Two!"], spec, MS_PER_CHAR)
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    record = stats.task("t1")
    assert record is not None
    assert record.outcome == "finished"
    assert record.audio_bytes == len(transcript.audio)
    assert record.audio_sha256 == hashlib.sha256(transcript.audio).hexdigest()
    assert (record.format, record.sample_rate, record.characters) == ("pcm", 24000, 9)


async def test_same_inputs_give_the_same_bytes(emulator: Emulator) -> None:
    """Two tasks with the same text and parameters get identical audio; another seed differs."""
    async with Peer.connect(emulator) as peer:
        first = await peer.synthesize("a", "Same text.")
        second = await peer.synthesize("b", "Same text.")
        other = await peer.synthesize("c", "Same text.", seed=1)
    assert first.audio == second.audio
    assert other.audio != first.audio
    assert len(other.audio) == len(first.audio)


async def test_wav_header_only_on_the_first_frame(emulator: Emulator) -> None:
    """wav: the task's first binary frame starts with the streamed RIFF header, no other does."""
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize("t1", "First. Second.", format="wav")
    frames = transcript.binary_frames
    assert len(frames) > 2
    assert frames[0].startswith(wav_header(16000))
    assert not any(f.startswith(b"RIFF") for f in frames[1:])
    assert transcript.audio == task_audio(
        ["First.", "Second."], AudioSpec("wav", 16000), MS_PER_CHAR
    )


async def test_default_format_is_mp3_at_22050(emulator: Emulator) -> None:
    """format "Default" / sample_rate 0 get the mp3/22050 placeholder bytes (§5)."""
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize("t1", "Hi.", format="Default", sample_rate=0)
    assert transcript.audio == task_audio(["Hi."], AudioSpec("mp3", 22050), MS_PER_CHAR)
    record = emulator.stats.task("t1")
    assert record is not None
    assert (record.format, record.sample_rate) == ("mp3", 22050)


async def test_flush_synthesises_the_tail_and_keeps_the_task_open(emulator: Emulator) -> None:
    """A flush turns the incomplete tail into a sentence; more text can follow."""
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        await peer.text("t1", "No end yet")
        await peer.flush("t1")
        flushed = await peer.until("end")
        assert flushed.sentences("sentence-end")[0]["output"]["original_text"] == "No end yet"
        await peer.text("t1", "More.")
        await peer.finish("t1")
        rest = await peer.until_end("t1")
    assert rest.final_event == "task-finished"
    assert [e["output"]["original_text"] for e in rest.sentences()] == ["More."]
    assert rest.final["payload"]["usage"]["characters"] == count_characters("No end yetMore.")


async def test_cjk_counting_and_word_timestamps(emulator: Emulator) -> None:
    """CJK ideographs count 2; words_in=sentence-end puts the words in sentence-end only."""
    emulator.update_knobs(words_in="sentence-end")  # the server-events page's variant
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize("t1", "你好。Good day!", word_timestamp_enabled=True)
    ends = transcript.sentences("sentence-end")
    assert [e["usage"]["characters"] for e in ends] == [5, 14]
    words = ends[1]["output"]["sentence"]["words"]
    assert [(w["text"], w["begin_index"], w["end_index"]) for w in words] == [
        ("Good", 0, 4),
        ("day!", 5, 9),
    ]
    assert words[-1]["end_time"] == round(9 * MS_PER_CHAR)
    assert all(not b["output"]["sentence"]["words"] for b in transcript.sentences("sentence-begin"))
    assert "sentence" not in transcript.final["payload"]["output"]


async def test_cancel_stops_audio_at_once(emulator: Emulator) -> None:
    """Cancel mid-audio: task-finished promptly, no audio after it, the socket is reusable."""
    emulator.update_knobs(realtime_factor=1.0, chunk_ms=50)
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        await peer.text("t1", "A long sentence that lasts for several seconds of audio.")
        before = await peer.until("audio")
        began = time.monotonic()
        await peer.finish("t1", cancel=True)
        after = await peer.until_end("t1")
        assert time.monotonic() - began < scaled(1.0)
        assert after.final_event == "task-finished"
        # Nothing of t1 arrives later: the next task's first frame is its task-started.
        emulator.update_knobs(realtime_factor=0)
        started = await peer.start("t2")
        assert started == {
            "header": {"task_id": "t2", "event": "task-started", "attributes": {}},
            "payload": {},
        }
        await peer.text("t2", "Next.")
        await peer.finish("t2")
        again = await peer.until_end("t2")
        assert again.final_event == "task-finished"
    record = emulator.stats.task("t1")
    assert record is not None
    assert record.outcome == "cancelled"
    assert record.audio_bytes == len(before.audio) + len(after.audio)
    assert emulator.stats.outcomes["cancelled"] == 1


async def test_a_connection_carries_tasks_one_after_another(emulator: Emulator) -> None:
    """Two tasks on one socket: both finish, both recorded on the same connection."""
    async with Peer.connect(emulator) as peer:
        await peer.synthesize("t1", "One.")
        await peer.synthesize("t2", "Two.")
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    assert stats.connections_opened == 1
    assert [r.task_id for r in stats.tasks_on(1)] == ["t1", "t2"]
    assert stats.tasks_started == 2


async def test_task_failed_then_the_server_closes(emulator: Emulator) -> None:
    """A rejected voice: task-failed InvalidParameter/418, then close code 1000."""
    async with Peer.connect(emulator) as peer:
        failed = await peer.start("t1", voice="bad-voice")
        assert failed["header"]["event"] == "task-failed"
        assert failed["header"]["error_code"] == "InvalidParameter"
        assert failed["header"]["error_message"] == "[tts:]Engine return error code: 418"
        with pytest.raises(ConnectionClosed) as info:
            await peer.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1000
    record = emulator.stats.task("t1")
    assert record is not None
    assert (record.outcome, record.error_code) == ("failed", "InvalidParameter")


async def test_connection_stays_open_after_failure_when_told(emulator: Emulator) -> None:
    """close_after_failure off: after task-failed the same socket runs the next task."""
    emulator.update_knobs(close_after_failure=False)
    async with Peer.connect(emulator) as peer:
        failed = await peer.start("t1", voice="")
        assert failed["header"]["error_message"] == "Request voice is invalid!"
        transcript = await peer.synthesize("t2", "Fine.")
    assert transcript.final_event == "task-finished"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("foreign-id", "does not match"),
        ("continue-after-finish", "after finish-task"),
        ("empty-text", "Parameter invalid: text is null"),
    ],
)
async def test_messages_out_of_place_fail_the_task(
    emulator: Emulator, steps: str, message: str
) -> None:
    """A foreign id, text after finish-task, empty text: InvalidParameter."""
    emulator.update_knobs(realtime_factor=1.0)  # keep t1 busy while the culprit arrives
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        if steps == "foreign-id":
            await peer.text("other", "Hello.")
        elif steps == "continue-after-finish":
            await peer.text("t1", "A sentence that takes a while.")
            await peer.finish("t1")
            await peer.text("t1", "Too late.")
        else:
            await peer.text("t1", "")
        transcript = await peer.until_end("t1")
    assert transcript.final_event == "task-failed"
    assert transcript.final["header"]["error_code"] == "InvalidParameter"
    assert message in transcript.final["header"]["error_message"]


async def test_ssml_task_takes_exactly_one_text_message(emulator: Emulator) -> None:
    """enable_ssml: tags are not spoken or counted; a second continue-task fails the task."""
    emulator.update_knobs(close_after_failure=False)
    ssml = '<speak>Hello <break time="1s"/>there.</speak>'
    async with Peer.connect(emulator) as peer:
        spoken = await peer.synthesize("t1", ssml, enable_ssml=True)
        await peer.start("t2", enable_ssml=True)
        await peer.text("t2", ssml)
        await peer.text("t2", "Again.")
        failed = await peer.until_end("t2")
    assert [e["output"]["original_text"] for e in spoken.sentences()] == ["Hello there."]
    assert spoken.final["payload"]["usage"]["characters"] == count_characters(ssml, ssml=True)
    assert failed.final_event == "task-failed"
    assert failed.final["header"]["error_message"] == "Text request limit violated, expected 1."


async def test_text_limits_per_message_and_per_task(emulator: Emulator) -> None:
    """Over max_chars_per_message or max_chars_per_task: task-failed InvalidParameter."""
    emulator.update_knobs(
        max_chars_per_message=10, max_chars_per_task=15, close_after_failure=False
    )
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        await peer.text("t1", "x" * 11)
        one = await peer.until_end("t1")
        await peer.start("t2")
        await peer.text("t2", "y" * 10)
        await peer.text("t2", "z" * 6)
        two = await peer.until_end("t2")
    assert "11 characters in one message" in one.final["header"]["error_message"]
    assert "16 characters in this task" in two.final["header"]["error_message"]


async def test_late_messages_and_client_binary_frames_are_ignored(emulator: Emulator) -> None:
    """After task-finished, a cancel for that task and a binary frame change nothing."""
    async with Peer.connect(emulator) as peer:
        await peer.synthesize("t1", "One.")
        await peer.finish("t1", cancel=True)
        await peer.ws.send(b"\x00\x01")
        transcript = await peer.synthesize("t2", "Two.")
    assert transcript.events[0]["header"]["task_id"] == "t2"
    assert transcript.final_event == "task-finished"


async def test_unparseable_json_closes_with_1007(emulator: Emulator) -> None:
    """A text frame that is not JSON closes the connection with 1007."""
    async with Peer.connect(emulator) as peer:
        await peer.send("{not json")
        with pytest.raises(ConnectionClosed) as info:
            await peer.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1007


async def test_bad_or_missing_key_is_refused_with_401(emulator: Emulator) -> None:
    """Unknown or missing key: HTTP 401 InvalidApiKey; any-case 'bearer' with a good key works."""
    emulator.update_knobs(api_keys=frozenset({"sk-good"}))
    for key in ("sk-bad", None):
        with pytest.raises(InvalidStatus) as info:
            async with Peer.connect(emulator, key=key):
                pass
        response = info.value.response
        assert response.status_code == 401
        assert b'"code": "InvalidApiKey"' in response.body
        assert b'"message": "Invalid API-key provided."' in response.body
    headers = {"Authorization": "bearer sk-good"}
    async with connect(emulator.url + "/", additional_headers=headers) as ws:
        await ws.send("{}")  # parses as JSON but is no message: closed with 1007
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    assert stats.handshakes_rejected == 2
    assert stats.connections_opened == 1


async def test_unknown_path_is_404(emulator: Emulator) -> None:
    """Only /api-ws/v1/inference (with or without '/') upgrades."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(emulator.url.replace("inference", "realtime")):
            pass
    assert info.value.response.status_code == 404

"""The documented variants the emulator speaks (docs/dashscope-protocol.md §15), on the wire.

Each knob is shown by what a raw peer receives, and most transcripts are fed
back through the protocol core's ClientTask, so the variant is checked from
both sides of the protocol.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from sidecar.emulator import Emulator, EmulatorKnobs
from sidecar.emulator.codes import message_for
from sidecar.protocol import (
    ClientTask,
    ContinueTask,
    RunTask,
    SentenceEvent,
    ServerEvent,
    TaskFinished,
    UnknownEvent,
    task_started_event,
)
from tests.emulator.peer import Frame, Peer, Transcript, run_params
from tests.timing import scaled

TWO_SENTENCES = ("Good day. ", "你好。")


def _replay(transcript: Transcript, task_id: str) -> tuple[ClientTask, list[ServerEvent | None]]:
    """Feed a task's frames after task-started to a ClientTask; return it and its events."""
    task = ClientTask(task_id, "cosyvoice-v3-flash", run_params())
    task.start()
    task.receive_text(task_started_event(task_id))
    task.finish()
    events: list[ServerEvent | None] = []
    for frame in transcript.frames:
        if isinstance(frame, bytes):
            events.append(task.receive_bytes(frame))
        else:
            events.append(task.receive_text(json.dumps(frame)))
    return task, events


def _words(sentence: dict[str, Any]) -> list[str]:
    return [w["text"] for w in sentence["words"]]


def test_defaults_follow_the_websocket_page() -> None:
    """Usage in both places, words in task-finished, request_uuid, new run-task interrupts."""
    knobs = EmulatorKnobs()
    assert (knobs.usage_in, knobs.words_in, knobs.finished_sentences) == (
        "both",
        "task-finished",
        "last",
    )
    assert knobs.request_uuid is True
    assert knobs.run_task_while_running == "interrupt"
    assert (knobs.idle_timeout_s, knobs.input_timeout_s, knobs.input_timeout_code) == (
        60.0,
        23.0,
        "CLIENT_ERROR",
    )
    assert knobs.reject_unexpected_fields is True
    assert knobs.cancel_supported is True
    assert (knobs.burst_starts_per_s, knobs.unknown_event_every, knobs.sentence_times) == (
        0.0,
        0,
        False,
    )


@pytest.mark.parametrize(
    ("usage_in", "in_ends", "in_finished"),
    [("both", True, True), ("sentence-end", True, False), ("task-finished", False, True)],
)
async def test_usage_goes_where_the_knob_says(
    emulator: Emulator, usage_in: str, in_ends: bool, in_finished: bool
) -> None:
    """usage.characters in sentence-end, task-finished or both; the client bills the last one."""
    emulator.update_knobs(usage_in=usage_in)
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize("t1", *TWO_SENTENCES)
    ends = transcript.sentences()
    assert [("usage" in e) for e in ends] == [in_ends, in_ends]
    assert ("usage" in transcript.final["payload"]) is in_finished
    task, _ = _replay(transcript, "t1")
    assert task.billed_characters == 10 + 5  # "Good day. " and two ideographs + "。"


async def test_words_only_in_task_finished_by_default(emulator: Emulator) -> None:
    """The WebSocket page: no words in sentence-end; task-finished carries the last sentence's."""
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize("t1", *TWO_SENTENCES, word_timestamp_enabled=True)
    assert all(not e["output"]["sentence"]["words"] for e in transcript.sentences())
    sentence = transcript.final["payload"]["output"]["sentence"]
    assert (sentence["index"], _words(sentence)) == (1, ["你", "好", "。"])
    _, events = _replay(transcript, "t1")
    finished = events[-1]
    assert isinstance(finished, TaskFinished)
    assert [(s.index, [w.text for w in s.words]) for s in finished.late_sentences] == [
        (1, ["你", "好", "。"])
    ]


async def test_words_of_every_sentence_as_a_list(emulator: Emulator) -> None:
    """finished_sentences=all: task-finished lists every sentence's words under sentences."""
    emulator.update_knobs(finished_sentences="all")
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize("t1", *TWO_SENTENCES, word_timestamp_enabled=True)
    output = transcript.final["payload"]["output"]
    assert "sentence" not in output
    assert [(s["index"], _words(s)) for s in output["sentences"]] == [
        (0, ["Good", "day."]),
        (1, ["你", "好", "。"]),
    ]
    _, events = _replay(transcript, "t1")
    finished = events[-1]
    assert isinstance(finished, TaskFinished)
    assert [s.index for s in finished.late_sentences] == [0, 1]


async def test_words_in_both_places_are_delivered_once(emulator: Emulator) -> None:
    """words_in=both: words in sentence-end and again in task-finished; the client keeps one."""
    emulator.update_knobs(words_in="both", finished_sentences="all")
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize("t1", *TWO_SENTENCES, word_timestamp_enabled=True)
    assert [_words(e["output"]["sentence"]) for e in transcript.sentences()] == [
        ["Good", "day."],
        ["你", "好", "。"],
    ]
    assert len(transcript.final["payload"]["output"]["sentences"]) == 2
    _, events = _replay(transcript, "t1")
    ends = [e for e in events if isinstance(e, SentenceEvent) and e.kind == "sentence-end"]
    assert [len(e.words) for e in ends] == [2, 3]
    finished = events[-1]
    assert isinstance(finished, TaskFinished)
    assert finished.late_sentences == ()


async def test_phonemes_and_sentence_times(emulator: Emulator) -> None:
    """phoneme_timestamp_enabled adds phonemes to each word; sentence_times adds sentence times."""
    emulator.update_knobs(words_in="sentence-end", sentence_times=True)
    async with Peer.connect(emulator) as peer:
        transcript = await peer.synthesize(
            "t1", *TWO_SENTENCES, word_timestamp_enabled=True, phoneme_timestamp_enabled=True
        )
    first, second = (e["output"]["sentence"] for e in transcript.sentences())
    # "Good day." lasts 9 x 60 ms; "你好。" counts 5 (ideographs count 2).
    assert (first["begin_time"], first["end_time"]) == (0, 540)
    assert (second["begin_time"], second["end_time"]) == (540, 840)
    ni = second["words"][0]
    assert [set(p) for p in ni["phonemes"]] == [{"text", "tone", "begin_time", "end_time"}]
    assert ni["phonemes"][0]["text"] == "你"
    assert ni["phonemes"][0]["tone"] in {"1", "2", "3", "4"}
    day = first["words"][1]
    assert "".join(p["text"] for p in day["phonemes"]) == "day."
    assert day["phonemes"][0]["begin_time"] == day["begin_time"]
    assert day["phonemes"][-1]["end_time"] == day["end_time"]
    _, events = _replay(transcript, "t1")
    ends = [e for e in events if isinstance(e, SentenceEvent) and e.kind == "sentence-end"]
    assert [(e.begin_time, e.end_time) for e in ends] == [(0, 540), (540, 840)]
    assert ends[1].words[0].phonemes[0].text == "你"


async def test_request_uuid_in_task_finished(emulator: Emulator) -> None:
    """task-finished carries header.attributes.request_uuid (recorded); off, attributes is {}."""
    async with Peer.connect(emulator) as peer:
        tagged = await peer.synthesize("t1", "Hello.")
        emulator.update_knobs(request_uuid=False)
        plain = await peer.synthesize("t2", "Hello.")
    request_uuid = tagged.final["header"]["attributes"]["request_uuid"]
    assert str(uuid.UUID(request_uuid)) == request_uuid
    record = emulator.stats.task("t1")
    assert record is not None
    assert record.request_uuid == request_uuid
    assert plain.final["header"]["attributes"] == {}
    task, _ = _replay(tagged, "t1")
    assert task.request_uuid == request_uuid


async def test_unknown_event_every_nth_task(emulator: Emulator) -> None:
    """unknown_event_every=2: the second task gets one unknown event before its first sentence."""
    emulator.update_knobs(unknown_event_every=2, unknown_event_name="task-progress")
    async with Peer.connect(emulator) as peer:
        first = await peer.synthesize("t1", "One. Two.")
        second = await peer.synthesize("t2", "One. Two.")
    assert "task-progress" not in first.shape()
    shape = second.shape()
    assert shape.count("task-progress") == 1
    assert shape[0] == "task-progress"
    assert shape[1] == "begin"
    assert first.audio == second.audio
    task, events = _replay(second, "t2")
    assert events[0] == UnknownEvent("t2", "task-progress")
    assert task.billed_characters == 9


async def _drain(peer: Peer) -> None:
    """Receive until the connection ends (raises ConnectionClosed)."""
    while True:
        await peer.recv()


async def _until_started(peer: Peer, task_id: str) -> list[Frame]:
    """Receive frames up to task-started (or task-failed) of ``task_id``; return those before."""
    before: list[Frame] = []
    while True:
        frame = await peer.recv()
        if isinstance(frame, dict) and frame["header"]["task_id"] == task_id:
            assert frame["header"]["event"] == "task-started", frame
            return before
        before.append(frame)


async def _interrupt_t1(emulator: Emulator, peer: Peer) -> list[Frame]:
    """Start a long t1, send run-task t2 mid-audio; return the frames between (t2 started)."""
    emulator.update_knobs(realtime_factor=1.0, chunk_ms=50)
    await peer.start("t1")
    await peer.text("t1", "A long sentence that lasts for several seconds of audio.")
    await peer.until("audio")
    emulator.update_knobs(realtime_factor=0)
    await peer.send(RunTask("t2", "cosyvoice-v3-flash", run_params()).encode())
    return await _until_started(peer, "t2")


@pytest.mark.parametrize(("mode", "finished"), [("interrupt", False), ("finish-old", True)])
async def test_a_new_run_task_interrupts_the_running_one(
    emulator: Emulator, mode: str, finished: bool
) -> None:
    """A run-task mid-task ends it (nothing more, or task-finished first) and runs the new one."""
    emulator.update_knobs(run_task_while_running=mode)
    async with Peer.connect(emulator) as peer:
        between = await _interrupt_t1(emulator, peer)
        await peer.text("t2", "Next.")
        await peer.finish("t2")
        second = await peer.until_end("t2")
    finals = [
        f["header"]["event"]
        for f in between
        if isinstance(f, dict) and f["header"]["event"] in ("task-finished", "task-failed")
    ]
    assert finals == (["task-finished"] if finished else [])
    if finished:
        assert isinstance(between[-1], dict)
        assert between[-1]["header"]["event"] == "task-finished"
    assert second.final_event == "task-finished"
    stats = await emulator.wait_for(lambda s: s.connections_open == 0, scaled(5))
    assert [(r.task_id, r.outcome) for r in stats.tasks_on(1)] == [
        ("t1", "interrupted"),
        ("t2", "finished"),
    ]
    assert stats.connections_opened == 1
    assert stats.running_tasks == 0


async def test_a_new_run_task_fails_the_running_one_when_told(emulator: Emulator) -> None:
    """run_task_while_running=fail: the old [EMU] behaviour, task-failed InvalidParameter, close."""
    emulator.update_knobs(run_task_while_running="fail", realtime_factor=1.0)
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        await peer.send(RunTask("t2", "cosyvoice-v3-flash", run_params()).encode())
        transcript = await peer.until_end("t1")
        with pytest.raises(ConnectionClosed):
            await peer.recv()
    assert transcript.final_event == "task-failed"
    assert transcript.final["header"]["error_code"] == "InvalidParameter"
    assert "started while task is running" in transcript.final["header"]["error_message"]


async def test_input_timeout_code_is_a_knob(emulator: Emulator) -> None:
    """input_timeout_code=InvalidParameter: the error-code page's variant of the 23 s timeout."""
    timeout = round(scaled(0.3), 3)
    emulator.update_knobs(input_timeout_s=timeout, input_timeout_code="InvalidParameter")
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        transcript = await peer.until_end("t1")
    assert transcript.final["header"]["error_code"] == "InvalidParameter"
    assert transcript.final["header"]["error_message"] == (
        f"request timeout after {timeout:g} seconds."
    )


async def test_burst_rate_refuses_starts_beyond_the_bucket(emulator: Emulator) -> None:
    """A start beyond burst_size before a refill fails Throttling.BurstRate; off, it passes."""
    emulator.update_knobs(burst_starts_per_s=0.001, burst_size=2, close_after_failure=False)
    async with Peer.connect(emulator) as peer:
        await peer.synthesize("t1", "One.")
        await peer.synthesize("t2", "Two.")
        refused = await peer.start("t3")
        emulator.update_knobs(burst_starts_per_s=0)
        allowed = await peer.synthesize("t4", "Four.")
    assert refused["header"]["event"] == "task-failed"
    assert refused["header"]["error_code"] == "Throttling.BurstRate"
    assert refused["header"]["error_message"] == message_for("Throttling.BurstRate")
    assert allowed.final_event == "task-finished"
    record = emulator.stats.task("t3")
    assert record is not None
    assert (record.outcome, record.error_code) == ("failed", "Throttling.BurstRate")


async def test_unexpected_field_closes_with_1007(emulator: Emulator) -> None:
    """A header field no SDK sends closes the connection with 1007 naming the field."""
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        message = json.loads(ContinueTask("t1", "Hi.").encode())
        message["header"]["sequence"] = 1
        await peer.send(json.dumps(message))
        with pytest.raises(ConnectionClosed) as info:
            await _drain(peer)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (
        1007,
        "Unexpected field: header.sequence",
    )


async def test_sdk_envelopes_pass_and_the_strict_check_can_be_lifted(emulator: Emulator) -> None:
    """continue-task repeating model/parameters/resources (SDKs) passes; knob off, extras pass."""
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        java_like = json.loads(ContinueTask("t1", "Hi.").encode())
        java_like["payload"].update(
            model="cosyvoice-v3-flash",
            task_group="audio",
            task="tts",
            function="SpeechSynthesizer",
            parameters=run_params(),
            resources=[],
        )
        await peer.send(json.dumps(java_like))
        await peer.finish("t1")
        first = await peer.until_end("t1")
        emulator.update_knobs(reject_unexpected_fields=False)
        await peer.start("t2")
        odd = json.loads(ContinueTask("t2", "Hi.").encode())
        odd["header"]["sequence"] = 1
        await peer.send(json.dumps(odd))
        await peer.finish("t2")
        second = await peer.until_end("t2")
    assert (first.final_event, second.final_event) == ("task-finished", "task-finished")
    assert first.audio == second.audio


async def test_cancel_directive_ignored_when_unsupported(emulator: Emulator) -> None:
    """cancel_supported=False: the directive is taken as a plain finish-task; all audio comes."""
    emulator.update_knobs(cancel_supported=False)
    async with Peer.connect(emulator) as peer:
        await peer.start("t1")
        await peer.text("t1", "Every word is spoken.")
        await peer.finish("t1", cancel=True)
        transcript = await peer.until_end("t1")
        whole = await peer.synthesize("t2", "Every word is spoken.")
    assert transcript.final_event == "task-finished"
    assert transcript.audio == whole.audio
    record = emulator.stats.task("t1")
    assert record is not None
    assert record.outcome == "finished"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("Throttling.AllocationQuota", "Free allocated quota exceeded."),
        ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
        ("Arrearage", "Arrearage (injected by the emulator)."),
    ],
)
async def test_fail_code_alone_sends_the_codes_message(
    emulator: Emulator, code: str, message: str
) -> None:
    """fail_code with fail_message left empty sends the message known for that code."""
    emulator.update_knobs(fail_start_every=1, fail_code=code)
    async with Peer.connect(emulator) as peer:
        failed = await peer.start("t1")
    assert (failed["header"]["error_code"], failed["header"]["error_message"]) == (code, message)

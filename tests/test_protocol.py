"""The sans-I/O protocol core, driven synchronously (no sockets, no event loop).

Section numbers (§) refer to docs/dashscope-protocol.md.
"""

from __future__ import annotations

import json

import pytest

from sidecar import protocol
from sidecar.protocol import ClientTask, TaskState
from sidecar.protocol import _events as protocol_events


def _task() -> ClientTask:
    return ClientTask("t1", "cosyvoice-v3-flash", {"voice": "longanyang", "format": "pcm"})


def _state(task: ClientTask) -> TaskState:
    """Read the state through a call, so mypy does not narrow it across actions."""
    return task.state


def _started(task: ClientTask) -> None:
    task.start()
    task.receive_text(protocol.task_started_event(task.task_id))


def test_run_task_frame_matches_the_documented_shape() -> None:
    """run-task carries the duplex header, the audio/tts/SpeechSynthesizer payload and input {}."""
    frame = json.loads(_task().start())
    assert frame["header"] == {"action": "run-task", "task_id": "t1", "streaming": "duplex"}
    payload = frame["payload"]
    assert payload["task_group"] == "audio"
    assert payload["task"] == "tts"
    assert payload["function"] == "SpeechSynthesizer"
    assert payload["model"] == "cosyvoice-v3-flash"
    assert payload["input"] == {}
    assert payload["parameters"]["voice"] == "longanyang"


def test_full_task_life_cycle() -> None:
    """started → text → flush → finish → audio → sentence-end → finished."""
    task = _task()
    _started(task)
    text = json.loads(task.send_text("你好, world."))
    assert text["payload"]["input"] == {"text": "你好, world."}
    assert json.loads(task.flush())["payload"]["input"] == {"flush": True}
    finish = json.loads(task.finish())
    assert finish["header"]["action"] == "finish-task"
    assert finish["payload"]["input"] == {}
    assert _state(task) is TaskState.FINISHING
    audio = task.receive_bytes(b"\x01\x02")
    assert audio == protocol.AudioReceived(b"\x01\x02")
    event = task.receive_text(
        protocol.result_generated_event("t1", "sentence-end", 0, original_text="x", characters=14)
    )
    assert isinstance(event, protocol.SentenceEvent)
    assert event.kind == "sentence-end"
    assert task.billed_characters == 14
    done = task.receive_text(protocol.task_finished_event("t1", 14))
    assert isinstance(done, protocol.TaskFinished)
    assert _state(task) is TaskState.FINISHED
    assert task.characters_sent == 12  # two ideographs count 2 each, 8 other characters


def test_task_failed_carries_code_and_message_from_the_header() -> None:
    """task-failed moves the task to FAILED and keeps error_code/error_message."""
    task = _task()
    task.start()
    event = task.receive_text(
        protocol.task_failed_event("t1", "InvalidParameter", "[tts:]Engine return error code: 418")
    )
    assert event == protocol.TaskFailed(
        "t1", "InvalidParameter", "[tts:]Engine return error code: 418"
    )
    assert task.state is TaskState.FAILED


def test_actions_in_the_wrong_state_raise() -> None:
    """Sending text before task-started, or twice finishing, is refused."""
    task = _task()
    with pytest.raises(protocol.InvalidTaskState):
        task.send_text("early")
    task.start()
    with pytest.raises(protocol.InvalidTaskState):
        task.start()
    with pytest.raises(protocol.InvalidTaskState):
        task.finish()
    task.receive_text(protocol.task_started_event("t1"))
    task.finish()
    with pytest.raises(protocol.InvalidTaskState):
        task.finish()


def test_server_misbehaviour_is_a_protocol_violation() -> None:
    """Audio before task-started, a frame that is not JSON or names no event, condemn the task."""
    task = _task()
    task.start()
    with pytest.raises(protocol.UnexpectedFrame):
        task.receive_bytes(b"\x00")
    assert task.state is TaskState.FAILED
    for frame in ("not json", '{"header": {"task_id": "t1"}}', '{"payload": {}}', "[1]"):
        task = _task()
        task.start()
        with pytest.raises(protocol.UnexpectedFrame):
            task.receive_text(frame)
        assert task.state is TaskState.FAILED, frame


def test_events_of_another_task_are_ignored() -> None:
    """A late event for an earlier task id does not touch this task."""
    task = _task()
    task.start()
    assert task.receive_text(protocol.task_finished_event("old", 3)) is None
    assert task.state is TaskState.STARTING


def test_cancel_directive_and_old_result_shape() -> None:
    """Cancel sends finish-task with directive=cancel; a typeless result is tolerated."""
    task = _task()
    _started(task)
    cancel = json.loads(task.cancel())
    assert cancel["payload"]["input"] == {"directive": "cancel"}
    assert task.state is TaskState.CANCELLING
    old = json.dumps(
        {
            "header": {"task_id": "t1", "event": "result-generated"},
            "payload": {"output": {"sentence": {"words": []}}, "usage": {"characters": 7}},
        }
    )
    event = task.receive_text(old)
    assert isinstance(event, protocol.SentenceEvent)
    assert event.kind == ""
    assert task.billed_characters == 7


@pytest.mark.parametrize(
    ("text", "ssml", "expected"),
    [
        ("hello", False, 5),
        ("你好", False, 4),
        ("こんにちは", False, 5),  # kana count 1
        ("한국어", False, 3),  # hangul counts 1
        ("𠀀", False, 2),  # CJK extension B
        ("<speak>你好</speak>", True, 4),
        ("<speak>你好</speak>", False, 19),
    ],
)
def test_count_characters(text: str, ssml: bool, expected: int) -> None:
    """CJK ideographs count 2, everything else 1, SSML tags 0 (§4.2)."""
    assert protocol.count_characters(text, ssml=ssml) == expected


def test_split_text_prefers_sentence_then_word_boundaries() -> None:
    """Pieces fit the limit, join back exactly, and end at sentence ends where possible."""
    text = "One two three. Four five six seven. Eight nine."
    pieces = protocol.split_text(text, 20)
    assert "".join(pieces) == text
    assert all(protocol.count_characters(p) <= 20 for p in pieces)
    assert pieces[0] == "One two three. "
    cjk = "你" * 15
    pieces = protocol.split_text(cjk, 10)
    assert pieces == ["你" * 5, "你" * 5, "你" * 5]
    nospace = "x" * 25
    assert protocol.split_text(nospace, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_split_text_of_a_50000_character_fragment() -> None:
    """A 50,000-character fragment becomes three messages under 20,000 each."""
    sentence = "This sentence has exactly fifty characters in it. "
    text = sentence * 1000
    pieces = protocol.split_text(text)
    assert "".join(pieces) == text
    assert len(pieces) == 3
    assert all(p.endswith(". ") for p in pieces[:-1])


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{", "InvalidPayload"),
        ('{"header": {"action": "run-task", "task_id": "t"}, "payload": {}}', "InvalidParameter"),
        (
            '{"header": {"action": "run-task", "task_id": "t"}, "payload": {"input": {}}}',
            "InvalidParameter",
        ),
        (
            '{"header": {"action": "jump", "task_id": "t"}, "payload": {"input": {}}}',
            "InvalidParameter",
        ),
    ],
)
def test_parse_client_frame_rejects_invalid_messages(frame: str, code: str) -> None:
    """The server side names the error code it answers with."""
    with pytest.raises(protocol.ProtocolViolation) as info:
        protocol.parse_client_frame(frame)
    assert info.value.code == code


def test_client_frames_round_trip_through_the_server_parser() -> None:
    """What the client encodes, the server side parses back."""
    task = _task()
    run = protocol.parse_client_frame(task.start())
    assert isinstance(run, protocol.RunTask)
    assert run.parameters["voice"] == "longanyang"
    task.receive_text(protocol.task_started_event("t1"))
    assert protocol.parse_client_frame(task.send_text("hi")) == protocol.ContinueTask("t1", "hi")
    assert protocol.parse_client_frame(task.flush()) == protocol.ContinueTask("t1", None)
    assert protocol.parse_client_frame(task.cancel()) == protocol.FinishTask("t1", cancel=True)


def _parsed(frame: str) -> object:
    """What the full parse makes of ``frame``: its event, or the error's type."""
    try:
        return protocol_events.parse_server_frame(frame)
    except protocol.UnexpectedFrame:
        return protocol.UnexpectedFrame


def _received(task: ClientTask, frame: str) -> object:
    try:
        return task.receive_text(frame)
    except protocol.UnexpectedFrame:
        return protocol.UnexpectedFrame


def _synthesis_parts(task_id: str) -> tuple[str, str]:
    """The canonical sentence-synthesis frame of ``task_id``, cut around its index."""
    frame = protocol.result_generated_event(task_id, "sentence-synthesis", 0)
    cut = frame.rindex('"index":0') + len('"index":')
    return frame[:cut], frame[cut + 1 :]


def test_sentence_synthesis_events_change_neither_state_nor_billing() -> None:
    """The frequent sentence-synthesis event parses to its index and leaves the task as it was."""
    task = _task()
    _started(task)
    for index in (0, 0, 1, 1, 12, 0, 123456789):
        frame = protocol.result_generated_event("t1", "sentence-synthesis", index)
        event = task.receive_text(frame)
        assert event == protocol_events.parse_server_frame(frame)
        assert event == protocol.SentenceEvent("t1", "sentence-synthesis", index, "")
    assert task.billed_characters is None
    assert _state(task) is TaskState.STREAMING


@pytest.mark.parametrize(
    "frame",
    [
        # Another task's (a late event, §7), with an id that extends this one's.
        protocol.result_generated_event("t10", "sentence-synthesis", 3),
        protocol.result_generated_event("t", "sentence-synthesis", 3),
        # Other encodings of the same event, and the older typeless shape.
        json.dumps(json.loads(protocol.result_generated_event("t1", "sentence-synthesis", 3))),
        '{"payload":{"output":{"type":"sentence-synthesis","sentence":{"index":3,"words":[]}}},'
        '"header":{"task_id":"t1","event":"result-generated","attributes":{}}}',
        # Usage on a synthesis event: must still be billed.
        protocol.result_generated_event("t1", "sentence-synthesis", 3, characters=9),
        # Other events whose text names the event, or is a whole canonical synthesis frame.
        protocol.result_generated_event(
            "t1", "sentence-end", 3, original_text="sentence-synthesis", characters=18
        ),
        protocol.result_generated_event(
            "t1",
            "sentence-begin",
            4,
            original_text=protocol.result_generated_event("t1", "sentence-synthesis", 3),
        ),
    ],
)
def test_frames_resembling_a_synthesis_event_are_told_apart(frame: str) -> None:
    """Other tasks' frames, other encodings, usage and look-alike texts: each parsed as it is."""
    task = _task()
    _started(task)
    expected = protocol_events.parse_server_frame(frame)
    event = task.receive_text(frame)
    if expected.task_id != "t1":
        assert event is None
        return
    assert event == expected
    if isinstance(expected, protocol.SentenceEvent) and expected.characters is not None:
        assert task.billed_characters == expected.characters


@pytest.mark.parametrize(
    "middle",
    [
        "01",  # a leading zero is not JSON
        "-1",
        "1.0",
        "1e2",
        " 1",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() accepts it, JSON does not
        "1" * 40,
        # The right prefix and suffix with more JSON between them: another sentence, billed.
        '1,"words":[]}},"usage":{"characters":9}},"z":{"a":{"b":{"index":2',
    ],
)
def test_odd_indexes_in_the_synthesis_shape_are_parsed_as_json_says(middle: str) -> None:
    """A synthesis-looking frame whose index is not plain digits parses (or fails) as JSON says."""
    prefix, suffix = _synthesis_parts("t1")
    frame = prefix + middle + suffix
    task = _task()
    _started(task)
    expected = _parsed(frame)
    assert _received(task, frame) == expected
    if isinstance(expected, protocol.SentenceEvent) and expected.characters is not None:
        assert task.billed_characters == expected.characters


# -- §6 as the official pages and SDKs disagree on it --------------------------------


def test_an_unknown_event_is_returned_and_changes_nothing() -> None:
    """A new event name is an UnknownEvent, in every state; the task goes on (§6)."""
    frame = protocol.server_event("t1", "task-progress", {"output": {"progress": 0.5}})
    assert protocol.parse_server_frame(frame) == protocol.UnknownEvent("t1", "task-progress")
    task = _task()
    task.start()
    assert task.receive_text(frame) == protocol.UnknownEvent("t1", "task-progress")
    assert _state(task) is TaskState.STARTING
    task.receive_text(protocol.task_started_event("t1"))
    assert task.receive_text(frame) == protocol.UnknownEvent("t1", "task-progress")
    assert _state(task) is TaskState.STREAMING
    task.finish()
    assert task.receive_text(frame) == protocol.UnknownEvent("t1", "task-progress")
    assert _state(task) is TaskState.FINISHING
    assert task.receive_text(protocol.server_event("other", "task-progress", {})) is None
    done = task.receive_text(protocol.task_finished_event("t1", 3))
    assert isinstance(done, protocol.TaskFinished)
    assert _state(task) is TaskState.FINISHED


def test_billing_is_the_last_usage_seen_in_any_event() -> None:
    """usage.characters from sentence-end or task-finished: the last one counts, absent keeps it."""
    task = _task()
    _started(task)
    assert task.billed_characters is None
    task.receive_text(protocol.result_generated_event("t1", "sentence-end", 0, characters=5))
    task.receive_text(protocol.result_generated_event("t1", "sentence-begin", 1))
    assert task.billed_characters == 5
    task.receive_text(protocol.result_generated_event("t1", "sentence-end", 1, characters=11))
    task.finish()
    done = task.receive_text(protocol.task_finished_event("t1"))
    assert done == protocol.TaskFinished("t1", None)
    assert task.billed_characters == 11  # a task-finished without usage does not reset it
    assert "usage" not in json.loads(protocol.task_finished_event("t1"))["payload"]

    only_at_the_end = _task()
    _started(only_at_the_end)
    only_at_the_end.receive_text(protocol.result_generated_event("t1", "sentence-end", 0))
    assert only_at_the_end.billed_characters is None
    only_at_the_end.finish()
    only_at_the_end.receive_text(protocol.task_finished_event("t1", 12))
    assert only_at_the_end.billed_characters == 12


def _words(*texts: str, phonemes: bool = False) -> tuple[protocol.Word, ...]:
    words = []
    for i, text in enumerate(texts):
        ph = (protocol.Phoneme(text[:1], "3", 100 * i, 100 * i + 50),) if phonemes else ()
        words.append(protocol.Word(text, i, i + 1, 100 * i, 100 * i + 100, ph))
    return tuple(words)


def test_words_phonemes_and_sentence_times_on_the_wire() -> None:
    """Phonemes carry text/tone/begin_time/end_time (Java's names); sentence times are optional."""
    words = _words("床", "前", phonemes=True)
    frame = protocol.result_generated_event(
        "t1", "sentence-end", 2, words=words, begin_time=1000, end_time=1200
    )
    sentence = json.loads(frame)["payload"]["output"]["sentence"]
    assert sentence["begin_time"] == 1000
    assert sentence["end_time"] == 1200
    assert sentence["words"][1]["phonemes"] == [
        {"begin_time": 100, "end_time": 150, "text": "前", "tone": "3"}
    ]
    event = protocol.parse_server_frame(frame)
    assert isinstance(event, protocol.SentenceEvent)
    assert (event.words, event.begin_time, event.end_time) == (words, 1000, 1200)
    plain = protocol.parse_server_frame(protocol.result_generated_event("t1", "sentence-end", 0))
    assert isinstance(plain, protocol.SentenceEvent)
    assert (plain.words, plain.begin_time, plain.end_time) == ((), None, None)
    assert (
        "phonemes"
        not in json.loads(
            protocol.result_generated_event("t1", "sentence-end", 0, words=_words("a"))
        )["payload"]["output"]["sentence"]["words"][0]
    )


def test_words_only_in_task_finished_are_late_sentences() -> None:
    """The WebSocket page's shape: no words in sentence-end, one sentence in task-finished."""
    task = _task()
    _started(task)
    task.receive_text(protocol.result_generated_event("t1", "sentence-end", 0, characters=4))
    task.finish()
    late = protocol.SentenceTimes(0, _words("你", "好"), 0, 200)
    done = task.receive_text(protocol.task_finished_event("t1", 4, sentences=[late]))
    assert isinstance(done, protocol.TaskFinished)
    assert done.late_sentences == (late,)
    frame = json.loads(protocol.task_finished_event("t1", 4, sentences=[late]))
    assert frame["payload"]["output"]["sentence"]["index"] == 0
    with pytest.raises(ValueError, match="sentences_as_list"):
        protocol.task_finished_event("t1", sentences=[late, late])


def test_words_already_delivered_are_not_delivered_again() -> None:
    """Words in sentence-end and again in task-finished: each sentence's words come out once."""
    task = _task()
    _started(task)
    zero, one, two = (protocol.SentenceTimes(i, _words(f"w{i}")) for i in range(3))
    task.receive_text(protocol.result_generated_event("t1", "sentence-end", 0, words=zero.words))
    task.receive_text(protocol.result_generated_event("t1", "sentence-end", 1))  # no words
    task.receive_text(protocol.result_generated_event("t1", "sentence-end", 2, words=two.words))
    task.finish()
    frame = protocol.task_finished_event(
        "t1", 9, sentences=[zero, one, two], sentences_as_list=True
    )
    # The parser alone keeps every sentence; the task removes the ones it delivered.
    parsed = protocol.parse_server_frame(frame)
    assert isinstance(parsed, protocol.TaskFinished)
    assert parsed.late_sentences == (zero, one, two)
    done = task.receive_text(frame)
    assert isinstance(done, protocol.TaskFinished)
    assert done.late_sentences == (one,)


@pytest.mark.parametrize(
    "output",
    [
        {"sentence": [{"index": 1, "words": [{"text": "a", "begin_time": 1, "end_time": 2}]}]},
        {"sentences": [{"index": 1, "words": [{"text": "a", "begin_time": 1, "end_time": 2}]}]},
        {
            "sentence": {"index": 1, "words": [{"text": "a", "begin_time": 1, "end_time": 2}]},
            "sentences": [{"index": 1, "words": [{"text": "a", "begin_time": 1, "end_time": 2}]}],
        },
    ],
)
def test_task_finished_sentences_in_either_shape(output: dict[str, object]) -> None:
    """One object or a list, under sentence or sentences: one sentence, delivered once."""
    task = _task()
    _started(task)
    frame = json.dumps(
        {"header": {"task_id": "t1", "event": "task-finished"}, "payload": {"output": output}}
    )
    done = task.receive_text(frame)
    assert isinstance(done, protocol.TaskFinished)
    assert done.late_sentences == (protocol.SentenceTimes(1, (protocol.Word("a", 0, 0, 1, 2),)),)


def test_request_uuid_from_task_finished_and_any_other_event() -> None:
    """header.attributes.request_uuid: on TaskFinished, and the task keeps the last non-empty."""
    task = _task()
    _started(task)
    assert task.request_uuid == ""
    tagged = json.loads(protocol.result_generated_event("t1", "sentence-end", 0))
    tagged["header"]["attributes"] = {"request_uuid": "early"}
    task.receive_text(json.dumps(tagged))
    assert task.request_uuid == "early"
    task.receive_text(protocol.result_generated_event("t1", "sentence-end", 1))
    assert task.request_uuid == "early"  # attributes {} does not clear it
    task.finish()
    frame = protocol.task_finished_event("t1", 3, request_uuid="req-1")
    assert json.loads(frame)["header"]["attributes"] == {"request_uuid": "req-1"}
    done = task.receive_text(frame)
    assert done == protocol.TaskFinished("t1", 3, "req-1")
    assert task.request_uuid == "req-1"
    failing = _task()
    failing.start()
    failed = failing.receive_text(protocol.task_failed_event("t1", "X", "y", request_uuid="r2"))
    assert failed == protocol.TaskFailed("t1", "X", "y", "r2")
    assert failing.request_uuid == "r2"


def test_audio_while_cancelling_is_dropped_by_the_core() -> None:
    """After cancel, binary frames give None until task-finished; after it, audio is a violation."""
    task = _task()
    _started(task)
    assert task.receive_bytes(b"\x01") == protocol.AudioReceived(b"\x01")
    task.cancel()
    assert task.receive_bytes(b"\x02") is None
    assert _state(task) is TaskState.CANCELLING
    task.receive_text(protocol.task_finished_event("t1", 1))
    assert _state(task) is TaskState.FINISHED
    with pytest.raises(protocol.UnexpectedFrame):
        task.receive_bytes(b"\x03")


def test_accepts_text_only_while_streaming() -> None:
    """accepts_text is True in STREAMING and in no other state."""
    task = _task()
    seen = [task.accepts_text]
    task.start()
    seen.append(task.accepts_text)
    task.receive_text(protocol.task_started_event("t1"))
    seen.append(task.accepts_text)
    task.finish()
    seen.append(task.accepts_text)
    task.receive_text(protocol.task_finished_event("t1", 0))
    seen.append(task.accepts_text)
    assert seen == [False, False, True, False, False]
    cancelled = _task()
    _started(cancelled)
    cancelled.cancel()
    assert not cancelled.accepts_text


def test_instruction_limit_counts_like_text() -> None:
    """instruction holds 100 counted characters: 50 ideographs fit, 51 do not (§5)."""
    assert protocol.MAX_INSTRUCTION_CHARS == 100
    assert protocol.count_characters("用" * 50) == protocol.MAX_INSTRUCTION_CHARS
    assert protocol.count_characters("用" * 51) > protocol.MAX_INSTRUCTION_CHARS
    assert protocol.count_characters("x" * 100) == protocol.MAX_INSTRUCTION_CHARS


def test_strict_parsing_accepts_the_sdks_envelope_and_refuses_other_fields() -> None:
    """What either SDK sends passes strict parsing; other fields are InvalidPayload."""
    header = {"action": "continue-task", "task_id": "t", "streaming": "duplex"}
    java_like = {
        "header": header,
        "payload": {
            "model": "m",
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "parameters": {"voice": "v", "anything": 1},
            "resources": [],
            "input": {"flush": True, "merged": "by Java's streamingFlush(params)"},
        },
    }
    assert protocol.unexpected_field(java_like) is None
    assert protocol.parse_client_frame(json.dumps(java_like), strict=True) == protocol.ContinueTask(
        "t", None
    )
    for message, field in (
        ({"header": {**header, "extra": 1}, "payload": {"input": {"text": "a"}}}, "header.extra"),
        ({"header": header, "payload": {"input": {"text": "a"}, "inputs": {}}}, "payload.inputs"),
        ({"header": header, "payload": {"input": {"text": "a"}}, "meta": {}}, "meta"),
    ):
        assert protocol.unexpected_field(message) == field
        frame = json.dumps(message)
        assert isinstance(protocol.parse_client_frame(frame), protocol.ContinueTask)
        with pytest.raises(protocol.ProtocolViolation) as info:
            protocol.parse_client_frame(frame, strict=True)
        assert (info.value.code, info.value.message) == (
            "InvalidPayload",
            f"Unexpected field: {field}",
        )

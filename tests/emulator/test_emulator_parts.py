"""The emulator's pure parts: knobs, segmentation, audio, run-task validation, CLI flags."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import struct

import pytest

from sidecar.emulator import AudioSpec, EmulatorKnobs, KnobError, task_audio
from sidecar.emulator.audio import encode, pcm_chunks, sentence_pcm, sentence_samples, wav_header
from sidecar.emulator.bucket import StartBucket
from sidecar.emulator.cli import add_arguments, knobs_from_args
from sidecar.emulator.params import ENGINE_418, ENGINE_428, task_params
from sidecar.emulator.sentences import SentenceSplitter, split_sentences, word_timings
from sidecar.protocol import ProtocolViolation, RunTask, count_characters

# -- knobs -------------------------------------------------------------------


def test_knobs_update_from_strings_parses_each_type() -> None:
    """Query-string values become floats, ints, bools, sets and None."""
    knobs = EmulatorKnobs()
    knobs.update_from_strings(
        {
            "realtime_factor": "0.25",
            "chunk_ms": "40",
            "close_after_failure": "off",
            "rejected_voices": "a, b",
            "api_keys": "k1,k2",
            "max_concurrent_tasks": "3",
            "fail_message": "Boom.",
        }
    )
    assert knobs.realtime_factor == 0.25
    assert knobs.chunk_ms == 40
    assert knobs.close_after_failure is False
    assert knobs.rejected_voices == frozenset({"a", "b"})
    assert knobs.api_keys == frozenset({"k1", "k2"})
    assert knobs.max_concurrent_tasks == 3
    assert knobs.fail_message == "Boom."
    knobs.update_from_strings({"api_keys": "none", "max_concurrent_tasks": ""})
    assert knobs.api_keys is None
    assert knobs.max_concurrent_tasks is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"no_such_knob": "1"}, "no_such_knob"),
        ({"chunk_ms": "zero"}, "chunk_ms"),
        ({"chunk_ms": "0"}, "chunk_ms"),
        ({"realtime_factor": "-1"}, "realtime_factor"),
        ({"idle_timeout_s": "nan"}, "idle_timeout_s"),
        ({"cancel_supported": "maybe"}, "cancel_supported"),
        ({"words_in": "nowhere"}, "words_in"),
        ({"run_task_while_running": "queue"}, "run_task_while_running"),
        ({"burst_size": "0"}, "burst_size"),
        ({"unknown_event_name": ""}, "unknown_event_name"),
    ],
)
def test_knobs_reject_bad_names_and_values_atomically(changes: dict[str, str], named: str) -> None:
    """A bad name or value raises KnobError naming the knob; no knob changes."""
    knobs = EmulatorKnobs()
    with pytest.raises(KnobError, match=named):
        knobs.update_from_strings({"start_delay_s": "5", **changes})
    assert knobs == EmulatorKnobs()


def test_knobs_mask_api_keys() -> None:
    """to_dict and repr never show an accepted API key in full."""
    knobs = EmulatorKnobs(api_keys=frozenset({"sk-secret-value"}))
    assert "sk-secret-value" not in str(knobs.to_dict())
    assert "sk-secret-value" not in repr(knobs)
    assert knobs.to_dict()["rejected_voices"] == ["bad-voice"]


def test_cli_flags_build_knobs() -> None:
    """Flags and --knob NAME=VALUE map onto knobs; a bad --knob raises KnobError."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--api-key=k1",
            "--api-key=k2",
            "--realtime-factor=1",
            "--max-concurrent-tasks=2",
            "--reject-voice=v1",
            "--keep-open-after-failure",
            "--knob",
            "ms_per_character=10",
            "--knob",
            "words_in=both",
        ]
    )
    knobs = knobs_from_args(args)
    assert knobs.api_keys == frozenset({"k1", "k2"})
    assert knobs.realtime_factor == 1.0
    assert knobs.max_concurrent_tasks == 2
    assert knobs.rejected_voices == frozenset({"v1"})
    assert knobs.close_after_failure is False
    assert knobs.ms_per_character == 10.0
    assert knobs.words_in == "both"
    assert (args.host, args.port) == ("127.0.0.1", 0)
    with pytest.raises(KnobError, match="nope"):
        knobs_from_args(parser.parse_args(["--knob", "nope=1"]))


# -- sentences ----------------------------------------------------------------


def test_split_sentences_keeps_every_character() -> None:
    """Segments end after punctuation runs and newlines; segments + tail == text."""
    text = "Hello world. How are you?!\n\n你好。再见\uff1bTail without end"
    segments, tail = split_sentences(text)
    assert segments == ["Hello world.", " How are you?!\n\n", "你好。", "再见\uff1b"]
    assert tail == "Tail without end"
    assert "".join(segments) + tail == text


def test_splitter_waits_for_the_tail_and_flushes_it() -> None:
    """An incomplete tail waits for more text; flush returns it; counts cover all text."""
    splitter = SentenceSplitter()
    assert splitter.feed("Hello wor") == []
    first = splitter.feed("ld. Next")
    assert [s.text for s in first] == ["Hello world."]
    assert splitter.tail == " Next"
    rest = splitter.flush()
    assert [s.text for s in rest] == ["Next"]
    total = sum(s.characters for s in first + rest)
    assert total == count_characters("Hello world. Next")


def test_blank_segments_are_billed_to_the_next_sentence() -> None:
    """Whitespace-only segments make no sentence but their characters still count."""
    splitter = SentenceSplitter()
    sentences = splitter.feed("A.\n \nB.")
    assert [(s.text, s.characters) for s in sentences] == [("A.", 3), ("B.", 4)]


def test_word_timings_cover_the_sentence() -> None:
    """Words are CJK ideographs or space-separated runs; times split the duration."""
    words = word_timings("Hi there 你好", 1000)
    assert [(w.text, w.begin_index, w.end_index) for w in words] == [
        ("Hi", 0, 2),
        ("there", 3, 8),
        ("你", 9, 10),
        ("好", 10, 11),
    ]
    assert words[0].begin_time == 0
    assert words[-1].end_time == 1000
    assert all(a.end_time == b.begin_time for a, b in itertools.pairwise(words))


# -- audio ----------------------------------------------------------------------


def test_sentence_pcm_is_deterministic_and_sized_by_characters() -> None:
    """Same inputs, same bytes; duration = chars x ms_per_character / rate."""
    spec = AudioSpec("pcm", 16000)
    pcm = sentence_pcm("Hello.", 0, spec, 60)
    assert pcm == sentence_pcm("Hello.", 0, spec, 60)
    assert len(pcm) == 2 * 16000 * 6 * 60 // 1000
    fast = AudioSpec("pcm", 16000, rate=2.0)
    assert len(sentence_pcm("Hello.", 0, fast, 60)) == len(pcm) // 2
    assert sentence_pcm("Hello.", 1, spec, 60) != pcm  # index changes the tone
    assert sentence_pcm("Hello.", 0, AudioSpec("pcm", 16000, seed=7), 60) != pcm
    assert sentence_samples("你好", spec, 60) == 16000 * 4 * 60 // 1000


def test_volume_scales_the_amplitude() -> None:
    """Volume 0 is silence; louder volumes peak higher, never beyond 16000."""

    def peak(volume: int) -> int:
        pcm = sentence_pcm("Hi.", 0, AudioSpec("pcm", 8000, volume=volume), 60)
        samples: tuple[int, ...] = struct.unpack(f"<{len(pcm) // 2}h", pcm)
        return max(abs(s) for s in samples)

    assert peak(0) == 0
    assert 0 < peak(25) < peak(50) < peak(100) <= 16000


def test_wav_header_is_a_streamed_riff_header() -> None:
    """44 bytes: RIFF/WAVE, PCM mono 16-bit at the rate, sizes 0xFFFFFFFF."""
    header = wav_header(24000)
    assert len(header) == 44
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", header)
    assert fields == (
        b"RIFF",
        0xFFFFFFFF,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        24000,
        48000,
        2,
        16,
        b"data",
        0xFFFFFFFF,
    )


def test_task_audio_is_chunking_independent() -> None:
    """Concatenated chunks encode to the same bytes as the whole (all but real mp3)."""
    for format_ in ("pcm", "wav", "opus"):
        spec = AudioSpec(format_, 22050)
        whole = task_audio(["One.", "Two!"], spec, 60)
        pieces = b"".join(
            encode(format_, chunk, 22050)
            for i, text in enumerate(["One.", "Two!"])
            for chunk in pcm_chunks(sentence_pcm(text, i, spec, 60), 22050, 30)
        )
        header = wav_header(22050) if format_ == "wav" else b""
        assert whole == header + pieces
    # Real mp3: one stream per sentence, back to back.
    spec = AudioSpec("mp3", 22050)
    sentences = [sentence_pcm(text, i, spec, 60) for i, text in enumerate(["One.", "Two!"])]
    assert task_audio(["One.", "Two!"], spec, 60) == b"".join(
        encode("mp3", pcm, 22050) for pcm in sentences
    )
    mp3 = task_audio(["One."], AudioSpec("mp3", 22050), 60)
    assert (
        hashlib.sha256(mp3).digest()
        != hashlib.sha256(task_audio(["One."], AudioSpec("opus", 22050), 60)).digest()
    )


# -- run-task parameters ----------------------------------------------------------


def _params(**parameters: object) -> RunTask:
    return RunTask("t", "cosyvoice-v3-flash", {"voice": "v", **parameters})


def test_default_format_resolves_to_mp3_22050() -> None:
    """format "Default" and sample_rate 0 (the Python SDK's default) mean mp3/22050 (§5)."""
    params = task_params(_params(format="Default", sample_rate=0), EmulatorKnobs())
    assert (params.audio.format, params.audio.sample_rate) == ("mp3", 22050)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"voice": ""}, "Request voice is invalid!"),
        ({"voice": "bad-voice"}, ENGINE_418),
        ({"format": "flac"}, "parameters.format"),
        ({"sample_rate": 12345}, "parameters.sample_rate"),
        ({"volume": 101}, "parameters.volume"),
        ({"volume": True}, "parameters.volume"),
        ({"volume": 50.0}, "parameters.volume"),  # integers stay integers on the wire
        ({"seed": 1.0}, "parameters.seed"),
        ({"instruction": "用" * 51}, ENGINE_428),
        ({"instruction": 7}, ENGINE_428),
        ({"phoneme_timestamp_enabled": 1}, "parameters.phoneme_timestamp_enabled"),
        ({"rate": 2.5}, "parameters.rate"),
        ({"pitch": 0.4}, "parameters.pitch"),
        ({"seed": 70000}, "parameters.seed"),
        ({"text_type": "Markdown"}, "parameters.text_type"),
        ({"enable_ssml": "yes"}, "parameters.enable_ssml"),
    ],
)
def test_invalid_parameters_are_refused(parameters: dict[str, object], message: str) -> None:
    """Each out-of-range or unknown parameter is InvalidParameter naming it."""
    with pytest.raises(ProtocolViolation) as info:
        task_params(_params(**parameters), EmulatorKnobs())
    assert info.value.code == "InvalidParameter"
    assert message in info.value.message


def test_rejected_models_get_418() -> None:
    """A model listed in rejected_models is refused like an unknown voice."""
    knobs = EmulatorKnobs(rejected_models=frozenset({"cosyvoice-v9"}))
    with pytest.raises(ProtocolViolation, match="418"):
        task_params(RunTask("t", "cosyvoice-v9", {"voice": "v"}), knobs)


def test_instruction_of_100_counted_characters_passes() -> None:
    """50 ideographs count 100, the limit; phoneme_timestamp_enabled is read as a flag."""
    params = task_params(
        _params(instruction="用" * 50, phoneme_timestamp_enabled=True), EmulatorKnobs()
    )
    assert params.phoneme_timestamps is True


def test_word_timings_with_phonemes_share_each_words_time() -> None:
    """Each character of a word is a phoneme; ideographs get a tone, the times tile the word."""
    words = word_timings("你好 ok", 500, phonemes=True)
    assert [w.text for w in words] == ["你", "好", "ok"]
    assert all(p.tone in {"1", "2", "3", "4"} for w in words[:2] for p in w.phonemes)
    ok = words[2]
    assert [(p.text, p.tone) for p in ok.phonemes] == [("o", ""), ("k", "")]
    assert ok.phonemes[0].begin_time == ok.begin_time
    assert ok.phonemes[0].end_time == ok.phonemes[1].begin_time
    assert ok.phonemes[-1].end_time == ok.end_time == 500
    assert all(not w.phonemes for w in word_timings("你好 ok", 500))


def test_start_bucket_refills_at_its_rate_up_to_its_size() -> None:
    """Starts full; one token per start; rate tokens a second, capped at size; rate 0 is off."""
    bucket = StartBucket()
    assert [bucket.take(0.0, 2.0, 3) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.4, 2.0, 3) is False  # 0.8 tokens
    assert bucket.take(0.5, 2.0, 3) is True  # 1.0 token
    assert [bucket.take(100.0, 2.0, 3) for _ in range(4)] == [True, True, True, False]
    assert all(bucket.take(100.0, 0.0, 3) for _ in range(10))
    assert "full" in repr(bucket)

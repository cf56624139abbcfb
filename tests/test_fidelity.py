"""The sidecar against the documented variants of what DashScope sends (docs §6, §7, §13).

The emulator's defaults follow the official WebSocket page; its knobs model
the other documented shapes. Every call here must succeed with byte-exact
audio whatever the shape, and carry what the caller is owed: billing, word
timings, DashScope's request id.
"""

from __future__ import annotations

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from google.protobuf import struct_pb2

from sidecar.emulator import Emulator
from sidecar.protocol import count_characters
from sidecar.server import SidecarServer
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles, eventually, sha256, task_record

TEXT = "The first sentence. And a second one, a little longer."


def _words(config: pb.SynthesisConfig | None = None) -> pb.SynthesisConfig:
    return config or pb.SynthesisConfig(word_timestamps=True)


@pytest.mark.parametrize("usage_in", ["sentence-end", "task-finished", "both"])
@pytest.mark.parametrize("words_in", ["sentence-end", "task-finished", "both"])
async def test_every_documented_shape_gives_exact_audio_billing_words_and_request_id(
    sidecar: SidecarServer, emulator: Emulator, usage_in: str, words_in: str
) -> None:
    """Usage and word timings wherever DashScope puts them, and an unknown event in every task."""
    emulator.update_knobs(
        usage_in=usage_in,
        words_in=words_in,
        finished_sentences="all",
        unknown_event_every=1,
    )
    async with AsyncSynthesizerClient(sidecar.address) as client:
        result = await client.synthesize(TEXT, _words())
    record = task_record(emulator, result.started.task_id)
    assert record.outcome == "finished"
    assert sha256(result.audio) == record.audio_sha256
    assert result.completed.billed_characters == count_characters(TEXT)
    assert result.completed.request_uuid  # the id Alibaba support asks for
    worded = [s for s in result.sentences if s.words]
    # Each sentence's words arrive once, wherever DashScope put them.
    assert sorted(s.index for s in worded) == [0, 1]
    assert all(s.text for s in worded)
    assert worded[0].words[0].text == "The"
    await assert_pool_settles(sidecar, emulator)


async def test_words_only_in_task_finished_as_documented_come_before_completed(
    sidecar: SidecarServer, emulator: Emulator
) -> None:
    """The WebSocket page's shape: the last sentence's words only in task-finished."""
    emulator.update_knobs(words_in="task-finished", finished_sentences="last", sentence_times=True)
    async with AsyncSynthesizerClient(sidecar.address) as client:
        stream = await client.open_stream(_words())
        await stream.send_text(TEXT)
        await stream.finish()
        kinds = [r.WhichOneof("response") async for r in stream]
    assert kinds[0] == "started"
    assert kinds[-1] == "completed"
    assert kinds[-2] == "sentence"  # the late timing, before completed


async def test_phoneme_and_sentence_times_reach_the_caller(
    sidecar: SidecarServer, emulator: Emulator
) -> None:
    emulator.update_knobs(words_in="sentence-end", sentence_times=True)
    async with AsyncSynthesizerClient(sidecar.address) as client:
        result = await client.synthesize(TEXT, pb.SynthesisConfig(phoneme_timestamps=True))
    timed = [s for s in result.sentences if s.words]
    assert timed
    assert all(s.HasField("end_ms") for s in timed)
    assert any(w.phonemes for s in timed for w in s.words)
    record = task_record(emulator, result.started.task_id)
    assert sha256(result.audio) == record.audio_sha256


async def test_an_unknown_event_is_ignored_and_counted_not_fatal(
    sidecar: SidecarServer, emulator: Emulator
) -> None:
    emulator.update_knobs(unknown_event_every=1, unknown_event_name="task-progress-v9")
    async with AsyncSynthesizerClient(sidecar.address) as client:
        for _ in range(3):
            result = await client.synthesize("Still fine.")
            assert (
                sha256(result.audio) == task_record(emulator, result.started.task_id).audio_sha256
            )
    # Every connection survived its task: none was discarded.
    assert sidecar.pool.status().closed_total == {}
    assert [t.outcome for t in emulator.stats.tasks] == ["finished"] * 3


async def test_a_cancelled_call_closes_its_socket_even_when_the_server_ignores_the_directive(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Caller hangs up mid-audio: DashScope's work stops at once by the socket's close.

    The emulator ignores the cancel directive (the official pages do not
    document it), so only a documented means can stop it; no audio of the
    cancelled task reaches the next call.
    """
    server = await start_sidecar(pool_min_idle=1, pool_max_size=1)
    emulator.update_knobs(cancel_supported=False, realtime_factor=1.0)
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream()
        await stream.send_text(TEXT * 4)
        await stream.finish()
        cancelled_id = ""
        async for response in stream:
            if response.HasField("started"):
                cancelled_id = response.started.task_id
            if response.HasField("audio"):
                break
        stream.cancel()
        await eventually(
            lambda: task_record(emulator, cancelled_id).outcome == "abandoned",
            what="the upstream task stopped",
        )
        cancelled = task_record(emulator, cancelled_id)
        emulator.update_knobs(realtime_factor=0.0)
        after = await client.synthesize(TEXT * 4)
    record = task_record(emulator, after.started.task_id)
    assert record.connection_id != cancelled.connection_id
    assert sha256(after.audio) == record.audio_sha256
    assert cancelled.audio_bytes < len(after.audio) / 4  # stopped early, not spoken to the end
    await assert_pool_settles(server, emulator)


async def test_a_hang_up_before_finish_never_synthesizes_the_rest(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """Text sent, no finish, the caller hangs up: the task ends without its tail's audio.

    DashScope's first packet takes hundreds of milliseconds (docs §7); the
    emulator is set to 200 ms. A hang-up is seen, and the socket closed, long
    before.
    """
    server = await start_sidecar()
    emulator.update_knobs(first_packet_delay_s=0.2)
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream()
        await stream.send_text("A sentence without its end")
        responses = aiter(stream)
        started = await anext(responses)
        stream.cancel()
    task_id = started.started.task_id
    await eventually(lambda: task_record(emulator, task_id).outcome == "abandoned", what="stopped")
    assert task_record(emulator, task_id).audio_bytes == 0
    await assert_pool_settles(server, emulator)


async def test_integers_in_extra_parameters_stay_integers_on_the_wire(
    sidecar: SidecarServer, emulator: Emulator
) -> None:
    """A Struct number is a double; a whole one goes out as a JSON integer (docs §13)."""
    extra = struct_pb2.Struct()
    extra.update({"style": 2, "hot_fix": {"ratio": 0.5}})
    async with AsyncSynthesizerClient(sidecar.address) as client:
        result = await client.synthesize("Integers.", pb.SynthesisConfig(extra_parameters=extra))
    assert result.completed.audio_bytes > 0
    assert emulator.stats.tasks[-1].outcome == "finished"


@pytest.mark.parametrize(
    ("instruction", "accepted"),
    [
        ("用开心的语气说" * 7, True),
        ("用开心的语气说" * 8, False),
        ("a" * 100, True),
        ("a" * 101, False),
        # Spaces of Chinese and French text are not control characters; BEL is.
        ("用开心的语气\u3000说", True),
        ("d\u00e9tendu\u00a0!", True),
        ("happy\x07", False),
    ],
)
async def test_instruction_is_limited_to_100_counted_characters(
    sidecar: SidecarServer, instruction: str, accepted: bool
) -> None:
    """CJK ideographs count 2: 49 of them is 98 (fine), 56 is 112 (refused before upstream)."""
    async with AsyncSynthesizerClient(sidecar.address) as client:
        call = client.synthesize("Hi.", pb.SynthesisConfig(instruction=instruction))
        if accepted:
            assert (await call).completed.audio_bytes > 0
            return
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "config.instruction" in (info.value.details() or "")

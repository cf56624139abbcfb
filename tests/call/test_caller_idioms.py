"""Callers as they really call: half-close, odd orders, blank text, what they send after the end."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.emulator import Emulator
from sidecar.protocol import count_characters
from sidecar.server import SidecarServer
from sidecar.telemetry import TraceContextFilter
from tests.helpers import assert_pool_settles, eventually, sha256, task_record
from tests.timing import scaled


def _requests(*items: pb.StreamingSynthesizeRequest) -> list[pb.StreamingSynthesizeRequest]:
    return [pb.StreamingSynthesizeRequest(config=pb.SynthesisConfig()), *items]


def _text(text: str) -> pb.StreamingSynthesizeRequest:
    return pb.StreamingSynthesizeRequest(text=text)


FINISH = pb.StreamingSynthesizeRequest(finish=pb.Finish())
FLUSH = pb.StreamingSynthesizeRequest(flush=pb.Flush())


async def _call(
    client: AsyncSynthesizerClient,
    requests: list[pb.StreamingSynthesizeRequest],
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[list[pb.SynthesizeResponse], grpc.aio.StreamStreamCall]:  # type: ignore[type-arg]
    """Send ``requests`` and half-close (as grpcurl does at the end of its input)."""

    async def gen() -> AsyncIterator[pb.StreamingSynthesizeRequest]:
        for request in requests:
            yield request

    call = client._stub.StreamingSynthesize(
        gen(),
        timeout=scaled(5),
        metadata=metadata,
    )
    return [r async for r in call], call


async def test_half_close_alone_finishes_the_stream(
    client: AsyncSynthesizerClient, sidecar: SidecarServer, emulator: Emulator
) -> None:
    """No finish message: ending the request stream is finish (Go CloseSend, Java onCompleted)."""
    responses, _ = await _call(client, _requests(_text("Half-closed. "), _text("Still spoken.")))
    assert responses[-1].WhichOneof("response") == "completed"
    audio = b"".join(r.audio.data for r in responses if r.HasField("audio"))
    record = task_record(emulator, responses[0].started.task_id)
    assert record.outcome == "finished"
    assert sha256(audio) == record.audio_sha256
    await assert_pool_settles(sidecar, emulator)


@pytest.mark.parametrize(
    ("after", "field"),
    [(_text("more"), "text"), (FLUSH, "flush"), (FINISH, "finish")],
    ids=["text", "flush", "finish"],
)
async def test_anything_after_finish_fails_the_call_naming_it(
    client: AsyncSynthesizerClient,
    sidecar: SidecarServer,
    emulator: Emulator,
    after: pb.StreamingSynthesizeRequest,
    field: str,
) -> None:
    """Text, flush or a second finish after finish: INVALID_ARGUMENT, never silently dropped."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(client, _requests(_text("Hello."), FINISH, after))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} sent after finish" in (info.value.details() or "")
    await assert_pool_settles(sidecar, emulator)


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "...!?", "\u3002\uff0c"])
async def test_synthesize_with_nothing_to_speak_is_refused_before_dashscope(
    client: AsyncSynthesizerClient, emulator: Emulator, text: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.synthesize(text)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "nothing to speak" in (info.value.details() or "")
    assert emulator.stats.tasks_started == 0


async def test_a_stream_with_nothing_to_speak_ends_ok_with_nothing_billed(
    client: AsyncSynthesizerClient, sidecar: SidecarServer, emulator: Emulator
) -> None:
    """Only blank fragments: OK, no audio, 0 billed, and DashScope never got text."""
    responses, _ = await _call(client, _requests(_text(" "), _text(""), _text("..."), FINISH))
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds == ["started", "completed"]
    completed = responses[-1].completed
    assert completed.billed_characters == 0
    assert completed.audio_bytes == 0
    task_id = responses[0].started.task_id
    await eventually(lambda: task_record(emulator, task_id).outcome == "abandoned", what="ended")
    assert task_record(emulator, task_id).characters == 0
    await assert_pool_settles(sidecar, emulator)


async def test_blank_fragments_join_the_next_text_so_dashscope_reads_it_unchanged(
    client: AsyncSynthesizerClient, emulator: Emulator
) -> None:
    """A space between words and a closing period are held, then sent with the text around them."""
    fragments = ["Hello", " ", "world", ".", " ", "Again", "!"]
    responses, _ = await _call(client, _requests(*map(_text, fragments)))
    record = task_record(emulator, responses[0].started.task_id)
    assert record.characters == count_characters("".join(fragments))
    assert [s.sentence.text for s in responses if s.HasField("sentence")] == [
        "Hello world.",
        "Again!",  # the emulator's segmentation strips the space between sentences
    ]


async def test_a_refused_call_carries_its_request_id_back_and_in_its_log_lines(
    client: AsyncSynthesizerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A call refused before any response: the id in the trailers and in the log line."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(TraceContextFilter())  # as configure_logging installs it
    bad = pb.StreamingSynthesizeRequest(config=pb.SynthesisConfig(volume=101))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(client, [bad], metadata=(("x-request-id", "req-refused-1"),))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(info.value.trailing_metadata() or ())
    assert trailers["x-request-id"] == "req-refused-1"
    ids = {getattr(r, "call_fields", {}).get("request_id") for r in caplog.records}
    assert "req-refused-1" in ids
    access = [r for r in caplog.records if r.name == "sidecar.access"]
    assert access[-1].call["grpc_code"] == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    # Without an id of the caller's, the sidecar makes one and says it.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(client, [bad])
    assert len(dict(info.value.trailing_metadata() or ())["x-request-id"]) == 32

"""The Synthesizer RPCs end to end: a real gRPC server, the pool and the emulator."""

from __future__ import annotations

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles, eventually, sha256, task_record
from tests.timing import scaled

FRAGMENTS = ["Hello there, this is ", "a streamed sentence. And a", " second one!"]


async def test_streaming_audio_is_exactly_what_the_upstream_sent(
    client: AsyncSynthesizerClient, emulator: Emulator
) -> None:
    """Config + three fragments: every audio byte the emulator sent arrives, in order."""
    result = await client.stream_texts(FRAGMENTS, pb.SynthesisConfig(format=pb.AUDIO_FORMAT_PCM))
    record = task_record(emulator, result.started.task_id)
    assert record.outcome == "finished"
    assert len(result.audio) == record.audio_bytes > 0
    assert sha256(result.audio) == record.audio_sha256
    assert result.started.format == pb.AUDIO_FORMAT_PCM
    assert result.started.sample_rate_hz == 22050
    assert result.started.model == "cosyvoice-v3-flash"
    assert result.started.warm_connection
    assert result.completed.audio_bytes == len(result.audio)
    assert result.completed.audio_chunks == result.chunks
    assert result.completed.billed_characters == record.characters > 0
    assert result.completed.first_audio_ms > 0
    assert result.completed.audio_duration_ms == pytest.approx(len(result.audio) / 44.1)
    assert [s.index for s in result.sentences] == [0, 1]


async def test_synthesize_one_shot_and_request_id(
    client: AsyncSynthesizerClient, emulator: Emulator
) -> None:
    """Synthesize streams the audio of one text; the caller's x-request-id is echoed."""
    result = await client.synthesize(
        "One shot.",
        pb.SynthesisConfig(format=pb.AUDIO_FORMAT_WAV, sample_rate_hz=16000),
        metadata=[("x-request-id", "req-42")],
    )
    record = task_record(emulator, result.started.task_id)
    assert sha256(result.audio) == record.audio_sha256
    assert result.audio[:4] == b"RIFF"
    assert result.started.request_id == "req-42"
    assert result.started.sample_rate_hz == 16000


async def test_flush_is_acknowledged_in_order(sidecar: SidecarServer, emulator: Emulator) -> None:
    """A flush is passed upstream and answered by a `flushed` response."""
    async with AsyncSynthesizerClient(sidecar.address) as client:
        stream = await client.open_stream()
        await stream.send_text("An unfinished clause")
        await stream.flush()
        await stream.send_text(" and its end.")
        await stream.finish()
        kinds = [r.WhichOneof("response") async for r in stream]
    assert kinds[0] == "started"
    assert "flushed" in kinds
    assert kinds[-1] == "completed"
    # The flushed clause was synthesized before the rest arrived: audio precedes the end.
    assert "audio" in kinds[kinds.index("flushed") :]


async def test_warm_pool_serves_20_calls_without_new_connections(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    """min_idle=4: four sockets open before the first call; 20 sequential calls reuse them.

    The only socket opened meanwhile is the one spare kept above the call in use.
    """
    server = await start_sidecar(pool_min_idle=4, pool_max_size=8)
    await eventually(lambda: emulator.stats.connections_open == 4, what="4 warm sockets")
    assert emulator.stats.connections_opened == 4
    async with AsyncSynthesizerClient(server.address) as client:
        for i in range(20):
            result = await client.synthesize(f"Call number {i}.")
            assert result.started.warm_connection
    assert emulator.stats.connections_opened == 5
    assert {t.connection_id for t in emulator.stats.tasks} <= {1, 2, 3, 4, 5}
    await assert_pool_settles(server, emulator)


def _config(**fields: object) -> pb.SynthesisConfig:
    return pb.SynthesisConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("requests", "field"),
    [
        ([pb.StreamingSynthesizeRequest(text="no config first")], "config"),
        (
            [
                pb.StreamingSynthesizeRequest(config=pb.SynthesisConfig()),
                pb.StreamingSynthesizeRequest(config=pb.SynthesisConfig()),
            ],
            "config",
        ),
        (
            [
                pb.StreamingSynthesizeRequest(config=pb.SynthesisConfig()),
                pb.StreamingSynthesizeRequest(text="Hello."),
                pb.StreamingSynthesizeRequest(finish=pb.Finish()),
                pb.StreamingSynthesizeRequest(text="more"),
            ],
            "text",
        ),
        ([pb.StreamingSynthesizeRequest(config=_config(format=9))], "config.format"),
        (
            [pb.StreamingSynthesizeRequest(config=_config(sample_rate_hz=12345))],
            "config.sample_rate_hz",
        ),
        ([pb.StreamingSynthesizeRequest(config=_config(volume=101))], "config.volume"),
        ([pb.StreamingSynthesizeRequest(config=_config(rate=2.5))], "config.rate"),
        ([pb.StreamingSynthesizeRequest(config=_config(pitch=0.1))], "config.pitch"),
        ([pb.StreamingSynthesizeRequest(config=_config(seed=70000))], "config.seed"),
        (
            [
                pb.StreamingSynthesizeRequest(
                    config=_config(
                        extra_parameters=struct_pb2.Struct(
                            fields={"voice": struct_pb2.Value(string_value="x")}
                        )
                    )
                )
            ],
            "config.extra_parameters",
        ),
        (
            [
                pb.StreamingSynthesizeRequest(config=_config(enable_ssml=True)),
                pb.StreamingSynthesizeRequest(text="<speak>one</speak>"),
                pb.StreamingSynthesizeRequest(text="<speak>two</speak>"),
            ],
            "text",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    sidecar: SidecarServer,
    emulator: Emulator,
    requests: list[pb.StreamingSynthesizeRequest],
    field: str,
) -> None:
    """Bad requests get INVALID_ARGUMENT with the field in the message and in BadRequest."""
    async with AsyncSynthesizerClient(sidecar.address) as client:
        stream = await _raw_stream(client, requests)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
    error = info.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert bad.field_violations[0].field == field
    await assert_pool_settles(sidecar, emulator)


async def _raw_stream(
    client: AsyncSynthesizerClient, requests: list[pb.StreamingSynthesizeRequest]
) -> grpc.aio.StreamStreamCall[pb.StreamingSynthesizeRequest, pb.SynthesizeResponse]:
    async def gen() -> object:
        for r in requests:
            yield r

    return client._stub.StreamingSynthesize(gen(), timeout=scaled(5))  # type: ignore[arg-type]


async def test_text_over_the_task_limit_is_rejected_before_it_goes_upstream(
    client: AsyncSynthesizerClient, sidecar: SidecarServer, emulator: Emulator
) -> None:
    """200,001 characters: INVALID_ARGUMENT naming the 200,000 limit; no text goes upstream."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.synthesize("a" * 200_001)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "200,000" in (info.value.details() or "")
    assert emulator.stats.tasks_started == 0
    # Streaming: the fragment that would cross the limit is refused before it is sent.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.stream_texts(["你" * 100_001])  # each ideograph counts 2
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "200,002 characters" in (info.value.details() or "")
    await assert_pool_settles(sidecar, emulator)
    assert emulator.stats.tasks[-1].characters == 0


async def test_long_fragment_is_split_across_messages(
    client: AsyncSynthesizerClient, emulator: Emulator
) -> None:
    """A 50,000-character fragment goes upstream as several continue-task messages."""
    emulator.update_knobs(ms_per_character=0.5)  # keep the audio small
    text = "This sentence has exactly fifty characters in it. " * 1000
    result = await client.synthesize(text)
    record = task_record(emulator, result.started.task_id)
    assert record.outcome == "finished"
    assert record.characters == 50_000
    assert sha256(result.audio) == record.audio_sha256


async def test_upstream_task_failure_maps_to_status_with_dashscope_code(
    client: AsyncSynthesizerClient, sidecar: SidecarServer, emulator: Emulator
) -> None:
    """A rejected voice (418): INVALID_ARGUMENT carrying InvalidParameter; the socket is dropped."""
    opened = emulator.stats.connections_opened
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.synthesize("Hello.", pb.SynthesisConfig(voice="bad-voice"))
    error = info.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "InvalidParameter" in (error.details() or "")
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    reason = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(reason) for d in status.details)
    assert reason.reason == "InvalidParameter"
    await assert_pool_settles(sidecar, emulator)
    # The failed socket was replaced to keep min_idle warm.
    assert emulator.stats.connections_opened > opened


async def test_throttling_is_resource_exhausted_with_retry_info(
    client: AsyncSynthesizerClient, sidecar: SidecarServer, emulator: Emulator
) -> None:
    """Throttling.RateQuota from upstream becomes RESOURCE_EXHAUSTED with RetryInfo."""
    emulator.update_knobs(max_concurrent_tasks=0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.synthesize("Hello.")
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Throttling" in (info.value.details() or "")
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    emulator.update_knobs(max_concurrent_tasks=None)
    await assert_pool_settles(sidecar, emulator)


async def test_half_close_means_finish(client: AsyncSynthesizerClient, emulator: Emulator) -> None:
    """A stream half-closed without a finish message is finished, not treated as a hang-up."""
    requests = [
        pb.StreamingSynthesizeRequest(config=pb.SynthesisConfig()),
        pb.StreamingSynthesizeRequest(text="Half-closed, never finished explicitly."),
    ]
    stream = await _raw_stream(client, requests)
    responses = [r async for r in stream]
    assert responses[-1].HasField("completed")
    task_id = responses[0].started.task_id
    assert task_record(emulator, task_id).outcome == "finished"


async def test_streams_still_waiting_for_their_config_count_toward_max_streams(
    start_sidecar: StartSidecar,
) -> None:
    """Streams that say nothing hold a stream for up to caller_idle_timeout_s: past
    --max-streams of them, the next call is refused at once (RESOURCE_EXHAUSTED), and room
    comes back when one goes away."""
    server = await start_sidecar(max_streams=2)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        silent = [stub.StreamingSynthesize(timeout=scaled(20)) for _ in range(2)]
        await eventually(lambda: server.servicer.opening_calls == 2, what="two streams opening")
        async with AsyncSynthesizerClient(server.address, retry=False) as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.synthesize("No room.", timeout=scaled(10))
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            silent[0].cancel()
            await eventually(lambda: server.servicer.opening_calls == 1, what="one went away")
            assert (await client.synthesize("Room again.", timeout=scaled(10))).completed
        silent[1].cancel()

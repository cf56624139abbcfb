"""The span tree and measurements of real calls: in-process server, emulator, in-memory OTel."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.emulator import Emulator
from sidecar.fleet import FleetSettings
from sidecar.server import SidecarServer
from sidecar.telemetry import JsonFormatter, TraceContextFilter
from tests.fleet.redis_server import RedisServer
from tests.helpers import assert_pool_settles, eventually, require_executable, task_record
from tests.proxy import TcpProxy
from tests.telemetry.conftest import Otel, StartTraced, point_value
from tests.timing import scaled

SERVICE = "cosyvoice.sidecar.v1.Synthesizer"
STREAMING = f"{SERVICE}/StreamingSynthesize"
UNARY = f"{SERVICE}/Synthesize"
FRAGMENTS = ["Hello there, this is ", "a streamed sentence. And a", " second one!"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def traceparent(trace_id: str = TRACE_ID, parent_id: str = PARENT_ID) -> list[tuple[str, str]]:
    return [("traceparent", f"00-{trace_id}-{parent_id}-01")]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def in_trace(otel: Otel, trace_id: str, name: str | None = None) -> list[ReadableSpan]:
    return [s for s in otel.spans(name) if format(s.context.trace_id, "032x") == trace_id]


def only(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


async def call_spans(otel: Otel, method: str, trace_id: str = TRACE_ID) -> list[ReadableSpan]:
    """Wait for the call's server span (the last to end) and return its trace's spans."""
    await eventually(lambda: bool(in_trace(otel, trace_id, method)), what=f"{method} span ends")
    return in_trace(otel, trace_id)


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[str]:
    """Names of ``parent``'s children in start order."""
    kids = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return [s.name for s in sorted(kids, key=lambda s: s.start_time or 0)]


async def test_successful_stream_span_tree(
    start_traced: StartTraced, otel: Otel, emulator: Emulator
) -> None:
    """Caller's traceparent → RPC span → borrow, synthesis, return, each with its attributes."""
    server = await start_traced()
    async with AsyncSynthesizerClient(server.address) as client:
        result = await client.stream_texts(
            FRAGMENTS, pb.SynthesisConfig(format=pb.AUDIO_FORMAT_PCM), metadata=traceparent()
        )
    record = task_record(emulator, result.started.task_id)
    spans = await call_spans(otel, STREAMING)

    rpc = only([s for s in spans if s.name == STREAMING])
    assert rpc.kind is SpanKind.SERVER
    assert rpc.parent is not None
    assert rpc.parent.is_remote
    assert format(rpc.parent.span_id, "016x") == PARENT_ID
    assert attrs(rpc)["rpc.response.status_code"] == "OK"
    assert attrs(rpc)["rpc.method"] == STREAMING
    assert attrs(rpc)["cosyvoice.request_id"] == result.started.request_id
    assert children(spans, rpc) == ["borrow", "synthesis", "return"]

    borrow = attrs(only(in_trace(otel, TRACE_ID, "borrow")))
    assert borrow["cosyvoice.borrow.result"] == "warm"
    assert borrow["cosyvoice.borrow.warm"] is True
    assert borrow["cosyvoice.borrow.opened_connection"] is False
    assert borrow["cosyvoice.borrow.wait_ms"] == pytest.approx(result.started.pool_wait_ms)
    assert borrow["cosyvoice.pool.idle"] == 2
    assert borrow["cosyvoice.pool.busy"] == 0
    assert borrow["cosyvoice.pool.waiters"] == 0
    assert borrow["cosyvoice.pool.max_size"] == 4

    synthesis_span = only(in_trace(otel, TRACE_ID, "synthesis"))
    synthesis = attrs(synthesis_span)
    assert synthesis["dashscope.task_id"] == result.started.task_id
    assert synthesis["dashscope.model"] == "cosyvoice-v3-flash"
    assert synthesis["dashscope.voice"] == result.started.voice
    assert synthesis["cosyvoice.audio.format"] == "pcm"
    assert synthesis["cosyvoice.audio.sample_rate"] == 22050
    assert synthesis["dashscope.billed_characters"] == record.characters > 0
    assert synthesis["cosyvoice.text.characters"] == len("".join(FRAGMENTS))
    assert synthesis["cosyvoice.first_audio_ms"] == pytest.approx(result.completed.first_audio_ms)
    assert synthesis["cosyvoice.audio.bytes"] == len(result.audio) == record.audio_bytes
    assert synthesis["cosyvoice.audio.chunks"] == result.completed.audio_chunks
    assert synthesis["cosyvoice.sentences"] == 2
    assert synthesis["cosyvoice.synthesis.outcome"] == "finished"
    assert "dashscope.error_code" not in synthesis
    assert synthesis_span.status.status_code is StatusCode.UNSET
    assert synthesis["cosyvoice.connection.id"] == borrow["cosyvoice.connection.id"]

    returned = attrs(only(in_trace(otel, TRACE_ID, "return")))
    assert returned["cosyvoice.return.result"] == "returned"
    assert returned["cosyvoice.return.reason"] == "finished"
    assert returned["cosyvoice.connection.id"] == borrow["cosyvoice.connection.id"]

    # Neither the text nor the key appears anywhere.
    for span in otel.spans():
        for value in attrs(span).values():
            assert not any(fragment.strip() in str(value) for fragment in FRAGMENTS)
            assert "sk-test-key" not in str(value)

    await assert_pool_settles(server, emulator)
    metrics = otel.metrics()
    finished = {"cosyvoice.synthesis.outcome": "finished", "dashscope.model": "cosyvoice-v3-flash"}
    assert point_value(metrics["cosyvoice.synthesis.tasks"], **finished) == 1
    assert point_value(metrics["cosyvoice.synthesis.duration"], **finished).count == 1
    ttfa = point_value(metrics["cosyvoice.synthesis.time_to_first_audio"])
    assert ttfa.count == 1
    assert ttfa.sum == pytest.approx(result.completed.first_audio_ms / 1000)
    waits = point_value(metrics["cosyvoice.pool.connection.wait_time"])
    assert waits.count == 1
    assert waits.attributes == {"cosyvoice.borrow.result": "warm"}
    assert point_value(metrics["cosyvoice.pool.connection.use_time"]).count == 1
    calls = metrics["rpc.server.call.duration"]
    assert point_value(calls, **{"rpc.method": STREAMING}).count == 1
    # The gauges report the pool's status: spares above busy made it open a third socket.
    status = server.pool.status()
    assert status.idle == emulator.stats.connections_open == 3
    counts = metrics["cosyvoice.pool.connection.count"]
    assert point_value(counts, **{"cosyvoice.connection.state": "idle"}) == 3
    assert point_value(counts, **{"cosyvoice.connection.state": "busy"}) == 0
    assert point_value(metrics["cosyvoice.pool.connection.pending_requests"]) == 0
    assert point_value(metrics["cosyvoice.pool.connection.max"]) == 4
    assert point_value(metrics["cosyvoice.pool.connection.idle.min"]) == 2
    assert point_value(metrics["cosyvoice.pool.connection.opened"]) == status.opened_total == 3
    assert point_value(metrics["cosyvoice.pool.ready"]) == 1
    assert point_value(metrics["cosyvoice.pool.breaker.open"]) == 0


async def test_warm_up_connects_are_root_spans(start_traced: StartTraced, otel: Otel) -> None:
    """The pool's warm-up connections: one root CLIENT span each, not inside any call."""
    await start_traced()
    connects = otel.spans("connect")
    assert len(connects) == 2
    for span in connects:
        assert span.parent is None
        assert span.kind is SpanKind.CLIENT
        assert attrs(span)["cosyvoice.connect.result"] == "ok"
        assert attrs(span)["cosyvoice.connect.ms"] > 0
    assert len({attrs(s)["cosyvoice.connection.id"] for s in connects}) == 2
    created = otel.metrics()["cosyvoice.pool.connection.create_time"]
    assert sum(p.count for p in created) == 2


async def test_failed_task_span_tree(
    start_traced: StartTraced, otel: Otel, emulator: Emulator
) -> None:
    """Voice rejected by DashScope: synthesis fails with its error code, the socket is discarded;
    the spare the call made the pool open is a root span linked to the call."""
    server = await start_traced()
    async with AsyncSynthesizerClient(server.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.synthesize(
                "Hello.", pb.SynthesisConfig(voice="bad-voice"), metadata=traceparent()
            )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    spans = await call_spans(otel, UNARY)
    rpc = only([s for s in spans if s.name == UNARY])
    assert attrs(rpc)["rpc.response.status_code"] == "INVALID_ARGUMENT"
    assert rpc.status.status_code is StatusCode.UNSET  # the caller's error, not the server's
    assert children(spans, rpc) == ["borrow", "synthesis", "return"]

    synthesis_span = only(in_trace(otel, TRACE_ID, "synthesis"))
    synthesis = attrs(synthesis_span)
    assert synthesis["cosyvoice.synthesis.outcome"] == "failed"
    assert synthesis["dashscope.error_code"] == "InvalidParameter"
    assert synthesis["dashscope.voice"] == "bad-voice"
    assert synthesis["error.type"] == "UpstreamTaskFailed"
    assert synthesis_span.status.status_code is StatusCode.ERROR
    assert synthesis["cosyvoice.audio.bytes"] == 0
    assert "cosyvoice.first_audio_ms" not in synthesis
    # Refused at run-task, the task still has an id for DashScope support.
    assert synthesis["dashscope.task_id"] == emulator.stats.tasks[-1].task_id

    returned = attrs(only(in_trace(otel, TRACE_ID, "return")))
    assert returned["cosyvoice.return.result"] == "discarded"
    assert returned["cosyvoice.return.reason"] == "task_failed"

    await assert_pool_settles(server, emulator)
    linked = [s for s in otel.spans("connect") if s.links]
    assert len(linked) == 1
    assert linked[0].parent is None
    assert format(linked[0].links[0].context.trace_id, "032x") == TRACE_ID

    metrics = otel.metrics()
    failed = point_value(
        metrics["cosyvoice.synthesis.tasks"],
        **{"cosyvoice.synthesis.outcome": "failed", "dashscope.error_code": "InvalidParameter"},
    )
    assert failed == 1
    closed = metrics["cosyvoice.pool.connection.closed"]
    assert sum(p.value for p in closed) == 1
    assert "cosyvoice.synthesis.time_to_first_audio" not in metrics


async def test_cancelled_stream_span_tree(
    start_traced: StartTraced, otel: Otel, emulator: Emulator
) -> None:
    """The caller cancels mid-stream: CANCELLED, the task cancelled upstream, the socket kept."""
    server = await start_traced()
    async with AsyncSynthesizerClient(server.address) as client:
        stream = await client.open_stream(metadata=traceparent())
        await stream.send_text("A sentence that will never be finished")
        responses = aiter(stream)
        first = await anext(responses)
        assert first.WhichOneof("response") == "started"
        stream.cancel()
        spans = await call_spans(otel, STREAMING)
    rpc = only([s for s in spans if s.name == STREAMING])
    assert attrs(rpc)["rpc.response.status_code"] == "CANCELLED"
    assert children(spans, rpc) == ["borrow", "synthesis", "return"]

    synthesis_span = only(in_trace(otel, TRACE_ID, "synthesis"))
    synthesis = attrs(synthesis_span)
    assert synthesis["cosyvoice.synthesis.outcome"] == "cancelled"
    assert synthesis["dashscope.task_id"] == first.started.task_id
    assert synthesis["error.type"] == "CancelledError"
    assert synthesis_span.status.status_code is StatusCode.UNSET
    await eventually(
        lambda: task_record(emulator, first.started.task_id).outcome == "abandoned",
        what=f"the emulator sees the socket close: {task_record(emulator, first.started.task_id)}",
    )

    returned = attrs(only(in_trace(otel, TRACE_ID, "return")))
    assert returned["cosyvoice.return.result"] == "discarded"
    assert returned["cosyvoice.return.reason"] == "cancelled"
    await assert_pool_settles(server, emulator)
    tasks = otel.metrics()["cosyvoice.synthesis.tasks"]
    cancelled = {
        "cosyvoice.synthesis.outcome": "cancelled",
        "dashscope.model": "cosyvoice-v3-flash",
    }
    assert point_value(tasks, **cancelled) == 1


async def _refused_beside_a_holder(
    server: SidecarServer, holder_trace: str
) -> grpc.aio.AioRpcError:
    """A stream (traced as ``holder_trace``) holds the only capacity while a Synthesize call
    (traced as TRACE_ID) fails; the holder then completes. Returns the call's error."""
    async with AsyncSynthesizerClient(server.address, retry=False) as client:
        holder = await client.open_stream(metadata=traceparent(holder_trace))
        await holder.send_text("Holding the only capacity.")
        held = aiter(holder)
        assert (await anext(held)).WhichOneof("response") == "started"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.synthesize("Hello.", metadata=traceparent())
        await holder.finish()
        async for _ in held:
            pass
    return info.value


async def test_pool_exhausted_call_has_only_a_failed_borrow(
    start_traced: StartTraced, otel: Otel, emulator: Emulator
) -> None:
    """Every connection busy past the bound: RESOURCE_EXHAUSTED, a borrow span saying so,
    no synthesis and no return in that trace."""
    server = await start_traced(pool_min_idle=1, pool_max_size=1, acquire_timeout_s=scaled(0.3))
    holder_trace = "11111111111111111111111111111111"
    refused = await _refused_beside_a_holder(server, holder_trace)
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    spans = await call_spans(otel, UNARY)
    rpc = only([s for s in spans if s.name == UNARY])
    assert attrs(rpc)["rpc.response.status_code"] == "RESOURCE_EXHAUSTED"
    assert children(spans, rpc) == ["borrow"]
    borrow_span = only(in_trace(otel, TRACE_ID, "borrow"))
    borrow = attrs(borrow_span)
    assert borrow["cosyvoice.borrow.result"] == "exhausted"
    assert borrow["error.type"] == "PoolExhausted"
    assert borrow["cosyvoice.pool.busy"] == 1
    assert borrow["cosyvoice.pool.idle"] == 0
    assert borrow["cosyvoice.pool.max_size"] == 1
    assert borrow["cosyvoice.borrow.wait_ms"] >= 300 * 0.9 * scaled(1)
    assert borrow_span.status.status_code is StatusCode.ERROR

    await call_spans(otel, STREAMING, holder_trace)
    await assert_pool_settles(server, emulator)
    metrics = otel.metrics()
    assert point_value(metrics["cosyvoice.pool.connection.timeouts"]) == 1
    waits = metrics["cosyvoice.pool.connection.wait_time"]
    assert point_value(waits, **{"cosyvoice.borrow.result": "exhausted"}).count == 1


async def test_a_fleet_quota_timeout_is_an_exhausted_borrow(
    start_traced: StartTraced, otel: Otel, emulator: Emulator
) -> None:
    """The connection was there, the fleet slot was not: the borrow is traced and counted
    as exhausted (FleetExhausted), not as the warm borrow it had been a moment before."""
    redis = RedisServer(require_executable("redis-server"))
    await redis.start()
    try:
        fleet = FleetSettings(redis_url=redis.url, quota=1, key="telemetry")
        server = await start_traced(fleet=fleet, acquire_timeout_s=scaled(0.3))
        holder_trace = "22222222222222222222222222222222"
        refused = await _refused_beside_a_holder(server, holder_trace)
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await call_spans(otel, UNARY)
        borrow = attrs(only(in_trace(otel, TRACE_ID, "borrow")))
        assert borrow["cosyvoice.borrow.result"] == "exhausted"
        assert borrow["error.type"] == "FleetExhausted"
        await call_spans(otel, STREAMING, holder_trace)
        metrics = otel.metrics()
        assert point_value(metrics["cosyvoice.pool.connection.timeouts"]) == 1
        waits = metrics["cosyvoice.pool.connection.wait_time"]
        assert point_value(waits, **{"cosyvoice.borrow.result": "exhausted"}).count == 1
    finally:
        await redis.close()


async def test_stale_socket_retry_shows_both_attempts(
    start_traced: StartTraced, otel: Otel, emulator: Emulator
) -> None:
    """A pooled socket dead without a sign: the first attempt is traced as broken and
    discarded, the retry borrows a connection opened for it (a connect span inside)."""
    async with TcpProxy(emulator.port) as proxy:
        server = await start_traced(upstream_url=proxy.url(), pool_min_idle=1, pool_max_size=2)
        proxy.break_on_next_send()
        async with AsyncSynthesizerClient(server.address) as client:
            result = await client.synthesize("Through a dead socket.", metadata=traceparent())
        spans = await call_spans(otel, UNARY)
        await eventually(lambda: server.pool.status().opening == 0, what="settled")
    rpc = only([s for s in spans if s.name == UNARY])
    assert children(spans, rpc) == ["borrow", "synthesis", "return"] * 2
    first, second = sorted(in_trace(otel, TRACE_ID, "synthesis"), key=lambda s: s.start_time or 0)
    assert attrs(first)["cosyvoice.synthesis.outcome"] == "broken"
    assert attrs(first)["error.type"] == "UpstreamUnavailable"
    assert attrs(second)["cosyvoice.synthesis.outcome"] == "finished"
    assert attrs(second)["dashscope.task_id"] == result.started.task_id
    returns = sorted(in_trace(otel, TRACE_ID, "return"), key=lambda s: s.start_time or 0)
    assert [attrs(r)["cosyvoice.return.reason"] for r in returns] == [
        "connection_lost",
        "finished",
    ]
    borrows = sorted(in_trace(otel, TRACE_ID, "borrow"), key=lambda s: s.start_time or 0)
    assert [attrs(b)["cosyvoice.borrow.result"] for b in borrows] == ["warm", "opened"]
    (connect,) = [s for s in spans if s.name == "connect"]
    assert connect.parent is not None
    assert connect.parent.span_id == borrows[1].context.span_id
    assert attrs(connect)["cosyvoice.connect.purpose"] == "caller"
    assert point_value(otel.metrics()["cosyvoice.pool.stale_retries"]) == 1


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The sidecar's log records as JSON lines with trace ids, captured."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sidecar")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_log_lines_of_a_call_carry_its_trace_id(
    start_traced: StartTraced, otel: Otel, json_log: io.StringIO
) -> None:
    """The session's log line about the task names the caller's trace id."""
    server = await start_traced()
    async with AsyncSynthesizerClient(server.address) as client:
        result = await client.synthesize("Hello.", metadata=traceparent())
    await call_spans(otel, UNARY)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    about_task = [e for e in lines if result.started.task_id in e["message"]]
    assert about_task
    assert {e.get("trace_id") for e in about_task} == {TRACE_ID}

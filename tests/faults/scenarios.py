"""How each fault of the matrix is injected, and what each caller saw.

One coroutine per row of ``tests/faults/test_fault_matrix.py``: it sets up
the fault (emulator knobs, a black-hole upstream, a killed process, a signal,
a caller that misbehaves), runs the calls it hurts, checks what is particular
to the row, and returns what every hurt caller saw. The matrix checks the
rest after every row: the status against the table, the pool's counts and
the upstream's sockets, and the next call's audio byte for byte.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient, StreamingCall, SynthesisResult

from sidecar.config import Secret
from sidecar.emulator import Emulator
from sidecar.pool import PoolPolicy
from tests.faults.lab import (
    Lab,
    Seen,
    expected_audio,
    first_audio,
    seen,
    seen_error,
    wait_running,
)
from tests.faults.upstreams import Blackhole, EmulatorProcess, free_port
from tests.helpers import eventually, sha256, task_record
from tests.processes import Process
from tests.timing import scaled

SHORT: Final = "A short sentence."
# About 5 s of audio: at real-time pace the call is surely still running.
SLOW: Final = "A sentence long enough to take seconds at real-time pace, still running."
# ~300 s of 48 kHz audio (~28 MB) sent as fast as TCP allows: more than every
# buffer between the emulator and a caller that stopped reading holds.
FLOOD: Final = "Backpressure keeps memory bounded. " * 143
CODE = grpc.StatusCode
# A transient server-side failure (the emulator's default InternalError message
# is the one DashScope sends for a voice that does not exist: a caller error).
TRANSIENT: Final = {"fail_code": "InternalError", "fail_message": "Internal server error."}


@dataclass
class Received:
    """What a caller got before its call ended."""

    task_id: str = ""
    audio: bytearray = field(default_factory=bytearray)


async def _read(responses: Any, got: Received) -> None:
    async for response in responses:
        if response.HasField("started"):
            got.task_id = response.started.task_id
        got.audio += response.audio.data


async def _stream(
    client: AsyncSynthesizerClient, text: str, *, finish: bool = True
) -> StreamingCall:
    stream = await client.open_stream(timeout=scaled(15))
    await stream.send_text(text)
    if finish:
        await stream.finish()
    else:
        await stream.flush()
    return stream


def _policy(**fields: Any) -> PoolPolicy:
    """The test pool policy with a short reconnect backoff, so recovery fits the matrix's time."""
    base: dict[str, Any] = {
        "min_idle": 2,
        "max_size": 4,
        "acquire_timeout_s": scaled(2.0),
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
    }
    return PoolPolicy(**{**base, **fields})


async def _cancelled(call: Any) -> Seen:
    """Cancel a call as its caller would; return the status its call object ends with."""
    call.cancel()
    code = await asyncio.wait_for(call.code(), scaled(5))
    assert isinstance(code, grpc.StatusCode)
    return Seen(code)


async def _access_says(lab: Lab, code: str, count: int = 1) -> None:
    """The sidecar saw the call end as ``code`` too (its access line), not only the caller."""
    await eventually(
        lambda: lab.access_codes().count(code) >= count,
        what=f"{count} access line(s) {code}: {lab.access_codes()}",
    )


async def _abandoned(emulator: Emulator, task_id: str) -> None:
    """The upstream task was stopped by its socket's close (nothing left synthesizing)."""
    await eventually(
        lambda: task_record(emulator, task_id).outcome == "abandoned",
        what=f"task {task_id} stopped upstream",
    )


# ---------------------------------------------------------------- upstream faults


async def fails_at_start(lab: Lab) -> list[Seen]:
    lab.emulator.update_knobs(fail_start_every=1, **TRANSIENT)
    await lab.sidecar()
    async with lab.client() as client:
        result = await seen_error(client.synthesize(SHORT, timeout=scaled(10)))
    lab.emulator.update_knobs(fail_start_every=0)
    assert lab.emulator.stats.outcomes["failed"] == 1
    return [result]


async def _faulted_mid_audio(lab: Lab, outcome: str) -> list[Seen]:
    """A call whose task breaks after its first frame; the caller has a clean prefix of it.

    The frame sent before the fault may or may not reach the caller (a failing
    call drops what its writer had not taken yet), but what did is exact.
    """
    await lab.sidecar()
    got = Received()
    async with lab.client() as client:
        stream = await _stream(client, SHORT)
        result = await seen_error(_read(stream, got))
    record = task_record(lab.emulator, got.task_id)
    assert record.outcome == outcome
    sent = expected_audio(SHORT)[: record.audio_bytes]
    assert 0 < record.audio_bytes < len(expected_audio(SHORT))  # really mid-audio
    assert sha256(sent) == record.audio_sha256
    assert sent.startswith(got.audio)
    return [result]


async def fails_mid_audio(lab: Lab) -> list[Seen]:
    lab.emulator.update_knobs(fail_mid_every=1, **TRANSIENT)
    try:
        return await _faulted_mid_audio(lab, "failed")
    finally:
        lab.emulator.update_knobs(fail_mid_every=0)


async def dropped_mid_audio(lab: Lab) -> list[Seen]:
    lab.emulator.update_knobs(drop_mid_every=1)
    try:
        return await _faulted_mid_audio(lab, "abandoned")
    finally:
        lab.emulator.update_knobs(drop_mid_every=0)


async def throttled_socket_kept_open(lab: Lab) -> list[Seen]:
    emulator = lab.emulator
    emulator.update_knobs(
        close_after_failure=False, fail_start_every=1, fail_code="Throttling.RateQuota"
    )
    await lab.sidecar()
    async with lab.client() as client:
        result = await seen_error(client.synthesize(SHORT, timeout=scaled(10)))
    emulator.update_knobs(close_after_failure=True, fail_start_every=0, fail_code="InternalError")
    # The upstream left the failed socket open: the sidecar closed it itself, cleanly.
    await eventually(lambda: emulator.stats.client_close_codes[1000] == 1, what="closed 1000")
    return [result]


async def upstream_sigkilled_and_restarted(lab: Lab) -> list[Seen]:
    port = free_port()
    first = EmulatorProcess(port, "--realtime-factor", "1")
    await first.start()
    lab.cleanups.append(first.stop)
    server = await lab.sidecar(upstream_url=first.url, pool=_policy())
    async with lab.client() as client:
        stream = await _stream(client, SLOW)
        responses = aiter(stream)
        await first_audio(responses)
        first.kill()  # mid-audio; its sockets are reset by the kernel
        result = await seen_error(_read(responses, Received()))
    await first.stop()
    await eventually(lambda: not server.pool.ready, what="the pool noticed the upstream died")
    second = EmulatorProcess(port)
    await second.start()
    lab.cleanups.append(second.stop)
    lab.remote = second
    assert await server.wait_ready(scaled(10)), repr(server)
    return [result]


async def refused_key_then_reloaded(lab: Lab) -> list[Seen]:
    lab.emulator.update_knobs(api_keys=frozenset({"sk-the-right-key"}))
    key_file = lab.tmp_path / "dashscope-key"
    key_file.write_text("sk-wrong\n")
    server = await lab.sidecar(
        wait_ready=False, api_key=Secret("sk-wrong"), api_key_file=str(key_file)
    )
    await eventually(lambda: server.pool.status().breaker_open, what="breaker open")
    lab.expected_errors.append("refused the API key")  # logged once: an operator must act
    async with lab.client() as client:
        result = await seen_error(client.synthesize(SHORT, timeout=scaled(10)))
    key_file.write_text("sk-the-right-key\n")  # a rotated Secret, as the kubelet writes it
    assert await server.wait_ready(scaled(5)), repr(server)
    return [result]


async def accepts_tcp_never_answers(lab: Lab) -> list[Seen]:
    hole = Blackhole()
    await hole.__aenter__()

    async def close_hole() -> None:
        await hole.__aexit__(None, None, None)

    lab.cleanups.append(close_hole)
    server = await lab.sidecar(
        wait_ready=False,
        upstream_url=hole.url(),
        connect_timeout_s=scaled(0.3),
        pool=_policy(acquire_timeout_s=scaled(2.0)),
    )
    async with lab.client() as client:
        result = await seen_error(client.synthesize(SHORT, timeout=scaled(10)))
    assert hole.accepted >= 1
    assert lab.emulator.stats.connections_opened == 0  # nothing got through
    hole.forward_to(lab.emulator.port)  # the network mends
    assert await server.wait_ready(scaled(10)), repr(server)
    # Every connection that never got an answer was given up and closed by the sidecar.
    await eventually(lambda: hole.silent == 0, what=f"{hole.silent} silent connections left")
    return [result]


async def silent_before_task_started(lab: Lab) -> list[Seen]:
    start_timeout = scaled(0.2)
    # The emulator sleeps through it before answering (and so holds its task a while).
    lab.emulator.update_knobs(start_delay_s=3 * start_timeout)
    await lab.sidecar(start_timeout_s=start_timeout)
    async with lab.client() as client:
        result = await seen_error(client.synthesize(SHORT, timeout=scaled(10)))
    lab.emulator.update_knobs(start_delay_s=0)
    assert "no task-started within" in result.details
    return [result]


async def silent_after_task_started(lab: Lab) -> list[Seen]:
    lab.emulator.update_knobs(first_packet_delay_s=3600)
    await lab.sidecar(first_audio_timeout_s=scaled(0.3))
    async with lab.client() as client:
        result = await seen_error(client.synthesize(SHORT, timeout=scaled(10)))
    lab.emulator.update_knobs(first_packet_delay_s=0)
    assert "no audio within" in result.details
    await eventually(lambda: lab.emulator.stats.outcomes["abandoned"] == 1, what="abandoned")
    return [result]


async def crawling_upstream(lab: Lab) -> list[Seen]:
    lab.emulator.update_knobs(realtime_factor=20.0)  # each 100 ms frame takes 2 s
    await lab.sidecar(stall_timeout_s=scaled(0.3), first_audio_timeout_s=scaled(20))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with lab.client() as client:
        result = await seen_error(client.synthesize(SHORT, timeout=scaled(10)))
    assert loop.time() - started < scaled(3)  # the stall bound, not the first-audio one
    assert "stalled" in result.details
    lab.emulator.update_knobs(realtime_factor=0.0)
    return [result]


# ---------------------------------------------------------------- callers


async def cancel_waiting_for_a_connection(lab: Lab) -> list[Seen]:
    server = await lab.sidecar(pool_min_idle=1, pool_max_size=1, acquire_timeout_s=scaled(5))
    lab.emulator.update_knobs(realtime_factor=1.0)
    async with lab.client() as client:
        busy = asyncio.create_task(client.synthesize(SLOW, timeout=scaled(15)))
        await eventually(lambda: server.pool.status().busy == 1, what="the one connection busy")
        waiting = client._stub.Synthesize(pb.SynthesizeRequest(text=SHORT), timeout=scaled(10))
        await eventually(lambda: server.pool.status().waiters == 1, what="queued")
        result = await _cancelled(waiting)
        await eventually(lambda: server.pool.status().waiters == 0, what="queue empty")
        lab.emulator.update_knobs(realtime_factor=0.0)
        assert (await busy).completed.audio_bytes > 0
    await _access_says(lab, "CANCELLED")
    assert lab.emulator.stats.connections_opened == 1  # the queued call opened nothing
    return [result]


async def cancel_before_task_started(lab: Lab) -> list[Seen]:
    await lab.sidecar()
    lab.emulator.update_knobs(start_delay_s=scaled(0.5))
    async with lab.client() as client:
        call = client._stub.Synthesize(pb.SynthesizeRequest(text=SHORT), timeout=scaled(10))
        await wait_running(lab.emulator)  # run-task is there, task-started is not
        result = await _cancelled(call)
    lab.emulator.update_knobs(start_delay_s=0)
    await _access_says(lab, "CANCELLED")
    await eventually(lambda: lab.emulator.stats.outcomes["abandoned"] == 1, what="abandoned")
    return [result]


async def cancel_after_started_before_audio(lab: Lab) -> list[Seen]:
    await lab.sidecar()
    lab.emulator.update_knobs(first_packet_delay_s=3600)
    async with lab.client() as client:
        stream = await _stream(client, SHORT)
        started = await anext(aiter(stream))
        assert started.HasField("started")
        result = await _cancelled(stream._call)
    lab.emulator.update_knobs(first_packet_delay_s=0)
    await _access_says(lab, "CANCELLED")
    await _abandoned(lab.emulator, started.started.task_id)
    return [result]


async def _cancel_mid_audio(lab: Lab, *, finish: bool) -> list[Seen]:
    await lab.sidecar()
    lab.emulator.update_knobs(realtime_factor=1.0)
    async with lab.client() as client:
        stream = await _stream(client, SLOW, finish=finish)
        got = Received()
        async for response in stream:
            got.task_id = got.task_id or response.started.task_id
            if response.HasField("audio"):
                break
        result = await _cancelled(stream._call)
    await _access_says(lab, "CANCELLED")
    await _abandoned(lab.emulator, got.task_id)
    # Stopped the documented way: the sidecar closed the task's socket, cleanly.
    await eventually(lambda: lab.emulator.stats.client_close_codes[1000] == 1, what="1000")
    lab.emulator.update_knobs(realtime_factor=0.0)
    return [result]


async def cancel_mid_audio_input_open(lab: Lab) -> list[Seen]:
    return await _cancel_mid_audio(lab, finish=False)


async def cancel_mid_audio_after_finish(lab: Lab) -> list[Seen]:
    return await _cancel_mid_audio(lab, finish=True)


async def cancel_after_completed(lab: Lab) -> list[Seen]:
    server = await lab.sidecar(pool_min_idle=1, pool_max_size=1)
    async with lab.client() as client:
        stream = await _stream(client, SHORT)
        result = await stream.collect()
        assert result.completed.audio_bytes > 0
        assert not stream.cancel()  # too late: nothing to cancel
        seen_ = Seen(await stream._call.code())
    assert lab.access_codes() == ["OK"]
    assert task_record(lab.emulator, result.started.task_id).outcome == "finished"
    assert server.pool.status().closed_total == {}  # the connection went back, kept
    return [seen_]


async def deadline_mid_audio(lab: Lab) -> list[Seen]:
    await lab.sidecar()
    lab.emulator.update_knobs(realtime_factor=1.0)
    async with lab.client() as client:
        result = await seen_error(client.synthesize(SLOW, timeout=scaled(0.5)))
    # Not asserted: the sidecar's access line. It says CANCELLED instead of
    # DEADLINE_EXCEEDED when the caller's RST_STREAM beats the server's own
    # deadline timer (about 1 call in 20 on an idle machine).
    await eventually(lambda: lab.emulator.stats.outcomes["abandoned"] == 1, what="abandoned")
    lab.emulator.update_knobs(realtime_factor=0.0)
    return [result]


async def idle_caller_sends_nothing(lab: Lab) -> list[Seen]:
    server = await lab.sidecar(caller_idle_timeout_s=scaled(0.3))
    async with lab.client() as client:
        call = client._stub.StreamingSynthesize(timeout=scaled(10))
        result = await seen_error(call.read())
    assert "no config within" in result.details
    assert server.pool.status().busy == 0
    assert lab.emulator.stats.tasks_started == 0  # nothing was borrowed or started
    return [result]


async def idle_caller_after_text(lab: Lab) -> list[Seen]:
    await lab.sidecar(caller_idle_timeout_s=scaled(0.3))
    async with lab.client() as client:
        stream = await client.open_stream(timeout=scaled(10))
        await stream.send_text("Half a sentence and then")  # neither finish nor more text
        result = await seen_error(stream.collect())
    assert "no text and no finish" in result.details
    await eventually(lambda: lab.emulator.stats.outcomes["abandoned"] == 1, what="abandoned")
    return [result]


async def _one_too_many(lab: Lab, **overrides: Any) -> list[Seen]:
    """A call holds the only capacity; the next one is refused, the holder still completes."""
    await lab.sidecar(**overrides)
    lab.emulator.update_knobs(realtime_factor=1.0)
    async with lab.client() as client:
        holder = await _stream(client, SLOW)
        responses = aiter(holder)
        assert (await anext(responses)).HasField("started")
        result = await seen_error(client.synthesize(SHORT, timeout=scaled(10)))
        lab.emulator.update_knobs(realtime_factor=0.0)
        got = Received()
        await _read(responses, got)
    assert sha256(got.audio) == lab.emulator.stats.tasks[0].audio_sha256
    return [result]


async def over_max_streams(lab: Lab) -> list[Seen]:
    return await _one_too_many(lab, max_streams=1)


async def over_pool_size(lab: Lab) -> list[Seen]:
    result = await _one_too_many(
        lab, pool_min_idle=1, pool_max_size=1, acquire_timeout_s=scaled(0.3)
    )
    assert lab.emulator.stats.peak_open_connections == 1
    return result


CHURN: Final = 1000


async def thousand_connect_disconnects(lab: Lab) -> list[Seen]:
    """Callers that open a channel, start a call and hang up at once, in four ways."""
    server = await lab.sidecar(pool_min_idle=2, pool_max_size=8)
    lab.emulator.update_knobs(realtime_factor=1.0)  # a started call is still running at cancel
    lanes = asyncio.Semaphore(25)

    async def churn(i: int) -> Seen:
        async with lanes, grpc.aio.insecure_channel(server.address) as channel:
            stub = AsyncSynthesizerClient(server.address, channel=channel)._stub
            kind = i % 4
            if kind == 0:  # hung up before anything was sent
                return await _cancelled(stub.Synthesize(pb.SynthesizeRequest(text=SHORT)))
            if kind == 3:  # hung up once its task runs upstream
                call = stub.Synthesize(pb.SynthesizeRequest(text=SLOW), timeout=scaled(15))
                await call.read()
                return await _cancelled(call)
            stream = stub.StreamingSynthesize(timeout=scaled(15))
            await stream.write(pb.StreamingSynthesizeRequest(config=pb.SynthesisConfig()))
            if kind == 2:  # hung up after its first text
                await stream.write(pb.StreamingSynthesizeRequest(text=SHORT))
            return await _cancelled(stream)

    results = await asyncio.gather(*(churn(i) for i in range(CHURN)))
    lab.emulator.update_knobs(realtime_factor=0.0)
    # The sidecar ended every call it saw as a cancel, and never as anything else.
    await eventually(lambda: len(lab.access_codes()) >= CHURN // 4, what="access lines")
    assert set(lab.access_codes()) == {"CANCELLED"}, set(lab.access_codes())
    return list(results)


async def paused_reader(lab: Lab) -> list[Seen]:
    await lab.sidecar(caller_read_timeout_s=scaled(0.5), stall_timeout_s=scaled(0.3))
    async with lab.client() as client:
        stream = await client.open_stream(pb.SynthesisConfig(sample_rate_hz=48000))
        await stream.send_text(FLOOD)
        await stream.finish()
        responses = aiter(stream)
        task_id = (await anext(responses)).started.task_id
        await asyncio.sleep(scaled(1.5))  # reads nothing, three times its bound
        result = await seen_error(_read(responses, Received()))
    assert "unread" in result.details
    # The socket's close stops the task upstream; the upstream sees it a moment later.
    await eventually(
        lambda: task_record(lab.emulator, task_id).outcome == "abandoned", what="task stopped"
    )
    return [result]


# ---------------------------------------------------------------- signals


async def _signalled(
    lab: Lab, signals: tuple[signal.Signals, ...], *, grace: float, realtime: float
) -> list[Seen]:
    """A sidecar process with 4 calls running gets ``signals``; then the next one starts."""
    emulator = lab.emulator
    emulator.update_knobs(realtime_factor=realtime)
    async with Process(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        emulator.url,
        "--pool-min-idle",
        "2",
        "--pool-max-size",
        "8",
        "--drain-grace",
        str(grace),
        env={"DASHSCOPE_API_KEY": "sk-test"},
    ) as process:
        address = (await process.expect(r"serving on (\S+)")).group(1)
        assert process.proc is not None
        async with AsyncSynthesizerClient(address, retry=False) as client:
            calls = [
                asyncio.create_task(client.synthesize(SLOW, timeout=scaled(60))) for _ in range(4)
            ]
            await wait_running(emulator, 4)
            loop = asyncio.get_running_loop()
            for i, sig in enumerate(signals):
                if i:
                    await asyncio.sleep(scaled(0.5))  # still draining: the calls go on
                    assert not any(call.done() for call in calls)
                process.proc.send_signal(sig)
            signalled = loop.time()
            results = await asyncio.gather(*calls, return_exceptions=True)
        code, _, log = await process.finish()
        ended_s = loop.time() - signalled
    assert code == 0, log
    assert ended_s < min(grace, scaled(10)) + scaled(5), ended_s  # a second signal hurries
    assert "Traceback" not in log, log
    emulator.update_knobs(realtime_factor=0.0)
    seen_: list[Seen] = []
    for outcome in results:
        if isinstance(outcome, SynthesisResult):
            record = task_record(emulator, outcome.started.task_id)
            assert sha256(outcome.audio) == record.audio_sha256  # drained calls are whole
            seen_.append(Seen(CODE.OK))
        else:
            assert isinstance(outcome, grpc.aio.AioRpcError), outcome
            seen_.append(seen(outcome))
    # The process closed every upstream socket with 1000 before it exited.
    await eventually(lambda: emulator.stats.connections_open == 0, what="all sockets closed")
    stats = emulator.stats
    assert stats.client_close_codes[1000] == stats.connections_opened, stats.client_close_codes
    await lab.sidecar()  # the next sidecar, as the orchestrator would start it
    return seen_


async def sigterm_drains(lab: Lab) -> list[Seen]:
    return await _signalled(lab, (signal.SIGTERM,), grace=scaled(15), realtime=0.3)


async def sigint_drains(lab: Lab) -> list[Seen]:
    return await _signalled(lab, (signal.SIGINT,), grace=scaled(15), realtime=0.3)


async def second_sigterm(lab: Lab) -> list[Seen]:
    return await _signalled(lab, (signal.SIGTERM, signal.SIGTERM), grace=scaled(60), realtime=1.0)


async def sigterm_past_the_grace(lab: Lab) -> list[Seen]:
    return await _signalled(lab, (signal.SIGTERM,), grace=scaled(0.3), realtime=1.0)

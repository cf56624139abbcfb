"""One run's client side, in its own process: ``python -m cosyvoice_sidecar_bench.worker SPEC``.

``SPEC`` is a JSON object (mode, level, target, workload, timings). The worker
prepares (opens and warms whatever its mode keeps warm), prints one JSON line
``{"event": "ready", ...}``, waits for a line on stdin, runs ``level``
concurrent closed-loop workers for the window, and prints one JSON line
``{"event": "result", ...}``. Nothing else goes to stdout.

Worker ``i`` starts at ``ramp * i / level`` so the load is spread over one
task length instead of arriving as one burst, then starts a new task as soon
as its previous one ended, until ``ramp + duration`` seconds have passed (or
it ran ``max_tasks`` tasks, when that is set). Every task is bounded by
``task_timeout``; a task that fails or returns the wrong number of audio bytes
counts as an error, and failed ones are also counted by kind (``error_kinds``:
the gRPC status and the ``ErrorInfo`` reason, e.g. ``RESOURCE_EXHAUSTED
Throttling.RateQuota``). With ``honor_retry`` a worker whose task failed with
a ``RetryInfo`` waits that long before its next task, as a well-behaved caller
does.

A streaming task ends its input the way callers do: by half-closing the
request stream (``end="half-close"``, what Go's ``CloseSend``, Java's
``onCompleted`` and grpcurl do), or with the explicit ``finish`` message
first (``end="finish"``); ``end="alternate"`` switches between the two from
one task to the next (half-close first) and records each kind's time to
first audio apart (``ttfb_half-close_ms``, ``ttfb_finish_ms`` in the
breakdown).

Modes: ``cold``, ``floor`` (asyncio, :mod:`sidecar.upstream`), ``sdk-pool``
(the official SDK, threads), ``grpc-stream`` / ``grpc-unary`` (a load
generator against a running sidecar). The bench drives the sidecar with the
Go twin of the last two, ``clients/go/cmd/loadgen``, unless told
``--loadgen python``; it speaks this same protocol and reports the same keys,
so a change to the spec or the result here must be made there too.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cosyvoice_sidecar_bench.workload import Workload

# grpcio's asyncio client reports INTERNAL, with this message and no details, when
# a request it writes meets the end of the call: the server's status is lost
# (grpc/grpc#36066). Such failures are counted under their own name.
WRITE_RACE_DETAILS: Final = "Internal error from Core"
WRITE_RACE: Final = "grpcio-client-write-race"

__all__ = ["ENDS", "WRITE_RACE", "WRITE_RACE_DETAILS", "WorkerSpec", "main"]

_MAX_ERROR_SAMPLES: Final = 5
# How a streaming task ends its input; see the module docstring.
ENDS: Final = ("half-close", "finish", "alternate")
# A RetryInfo hint longer than this is cut to it (honor_retry).
_MAX_RETRY_WAIT_S: Final = 5.0


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process does; travels as JSON on the command line."""

    mode: str
    level: int
    target: str  # ws:// URL of the emulator, or host:port of the sidecar
    workload: Workload
    ramp_s: float
    duration_s: float
    task_timeout_s: float
    api_key: str = "sk-bench-local"
    end: str = "half-close"  # how a streaming task ends its input: ENDS
    max_tasks: int = 0  # tasks per worker; 0: as many as the window allows
    honor_retry: bool = False  # wait out a failed task's RetryInfo before the next

    def __post_init__(self) -> None:
        if self.end not in ENDS:
            raise ValueError(f"end must be one of {', '.join(ENDS)}, not {self.end!r}")

    def to_json(self) -> str:
        data = dict(self.__dict__)
        data["workload"] = self.workload.to_dict()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        data["workload"] = Workload.from_dict(data["workload"])
        return cls(**data)


@dataclass
class Tally:
    """What the workers saw; shared by threads in the sdk-pool mode (under ``lock``)."""

    expected_bytes: int
    tasks: int = 0
    errors: int = 0
    audio_mismatches: int = 0
    error_samples: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    ttfb_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    # Extra per-task samples some modes can measure (grpc: the sidecar's own figures).
    breakdown: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, ttfb_s: float, gaps_s: list[float], nbytes: int) -> None:
        with self.lock:
            self.tasks += 1
            if nbytes != self.expected_bytes:
                self.audio_mismatches += 1
                self._sample(f"{nbytes} audio bytes, expected {self.expected_bytes}")
            self.ttfb_ms.append(round(ttfb_s * 1000, 3))
            self.gaps_ms.extend(round(g * 1000, 3) for g in gaps_s)

    def error(self, exc: BaseException, kind: str = "") -> None:
        """Count a failed task; ``kind`` names it in ``error_kinds`` (default: its type)."""
        kind = kind or type(exc).__name__
        with self.lock:
            self.tasks += 1
            self.errors += 1
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
            self._sample(f"{type(exc).__name__}: {exc}")

    def _sample(self, text: str) -> None:
        if len(self.error_samples) < _MAX_ERROR_SAMPLES:
            self.error_samples.append(text[:300])


class Timer:
    """Collects the arrival times of one task's audio frames."""

    __slots__ = ("first", "gaps", "last", "nbytes", "start")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last = 0.0
        self.gaps: list[float] = []
        self.nbytes = 0

    def audio(self, size: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(now - self.last)
        self.last = now
        self.nbytes += size

    def record(self, tally: Tally) -> None:
        if self.first is None:
            tally.error(RuntimeError("the task ended without audio"))
        else:
            tally.ok(self.first - self.start, self.gaps, self.nbytes)


def _emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def _wait_for_go() -> None:
    if not sys.stdin.readline():
        raise SystemExit("the bench closed stdin before the start signal")


def _offsets(spec: WorkerSpec) -> list[float]:
    return [spec.ramp_s * i / spec.level for i in range(spec.level)]


def _result(tally: Tally, started: float, cpu_started: float, **extra: Any) -> dict[str, Any]:
    return {
        "tasks": tally.tasks,
        "errors": tally.errors,
        "audio_mismatches": tally.audio_mismatches,
        "error_samples": tally.error_samples,
        "error_kinds": tally.error_kinds,
        "ttfb_ms": tally.ttfb_ms,
        "gaps_ms": tally.gaps_ms,
        "breakdown": dict(tally.breakdown),
        "elapsed_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu_started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }


# ----------------------------------------------------------------- asyncio modes


def _no_kind(exc: BaseException) -> tuple[str, float | None]:
    return "", None


async def _closed_loop(
    spec: WorkerSpec,
    one_task: Callable[[int, int, Tally], Awaitable[None]],
    tally: Tally,
    *,
    serving: bool = False,
    classify: Callable[[BaseException], tuple[str, float | None]] = _no_kind,
) -> dict[str, Any]:
    """Run ``level`` closed-loop workers for the window; return the measurements.

    ``one_task(worker, k, tally)`` runs worker ``worker``'s ``k``-th task.
    ``serving``: this process is the serving one (cold, floor), so its event
    loop's CPU and wake-ups are reported too (``loop_cpu_s``, ``loop_waits``).
    A gRPC load generator's are not: the sidecar's loop is measured from
    outside, and the Go load generator, which has no event loop, reports the
    same fields as this one.
    ``classify`` names a failure's kind and its RetryInfo hint (seconds, or None).
    """
    await asyncio.to_thread(_wait_for_go)
    started = time.perf_counter()
    cpu_started = time.process_time()
    loop_cpu_started = time.thread_time()  # this thread runs the event loop
    loop_waits_started = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    stop_at = started + spec.ramp_s + spec.duration_s

    async def worker(index: int, offset: float) -> None:
        await asyncio.sleep(offset)
        k = 0
        while time.perf_counter() < stop_at and (spec.max_tasks == 0 or k < spec.max_tasks):
            try:
                async with asyncio.timeout(spec.task_timeout_s):
                    await one_task(index, k, tally)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                kind, retry_s = classify(exc)
                tally.error(exc, kind)
                if spec.honor_retry and retry_s is not None:
                    left = stop_at - time.perf_counter()
                    await asyncio.sleep(max(0.0, min(retry_s, _MAX_RETRY_WAIT_S, left)))
            k += 1

    await asyncio.gather(*(worker(i, o) for i, o in enumerate(_offsets(spec))))
    loop = (
        {
            "loop_cpu_s": time.thread_time() - loop_cpu_started,
            # How often the loop's thread blocked (voluntary context switches): its wake-ups.
            "loop_waits": resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - loop_waits_started,
        }
        if serving
        else {}
    )
    return _result(tally, started, cpu_started, **loop)


async def _run_upstream(spec: WorkerSpec) -> dict[str, Any]:
    """``cold`` and ``floor``: the sidecar's own upstream client, without the sidecar."""
    from sidecar import protocol
    from sidecar.upstream import UpstreamConnection, open_connection

    w = spec.workload

    async def connect() -> UpstreamConnection:
        return await open_connection(spec.target, spec.api_key, connect_timeout=10)

    async def synthesize(connection: UpstreamConnection, timer: Timer, tally: Tally) -> None:
        task = await connection.start_task(w.model, w.parameters, start_timeout=10)
        for fragment in w.fragments:
            await task.send_text(fragment)
        await task.finish()
        while not task.state.is_over:
            event = await task.next_event()
            if isinstance(event, protocol.AudioReceived):
                timer.audio(len(event.data))
        timer.record(tally)

    tally = Tally(w.expected_bytes)
    if spec.mode == "cold":

        async def cold_task(index: int, k: int, tally: Tally) -> None:
            timer = Timer()  # the clock starts before the connect: that is the point
            connection = await connect()
            try:
                await synthesize(connection, timer, tally)
            finally:
                await connection.aclose()

        _emit("ready", warmup_s=None, warmup_sockets=0)
        return await _closed_loop(spec, cold_task, tally, serving=True)

    started = time.perf_counter()
    sockets = list(await asyncio.gather(*(connect() for _ in range(spec.level))))
    warmup = time.perf_counter() - started

    async def floor_task(index: int, k: int, tally: Tally) -> None:
        if not sockets[index].reusable:  # the last task failed: replace its socket
            sockets[index] = await connect()
        await synthesize(sockets[index], Timer(), tally)

    _emit("ready", warmup_s=warmup, warmup_sockets=spec.level)
    try:
        return await _closed_loop(spec, floor_task, tally, serving=True)
    finally:
        await asyncio.gather(*(s.aclose() for s in sockets), return_exceptions=True)


def _grpc_failure(exc: BaseException) -> tuple[str, float | None]:
    """Name a failed gRPC task (status code and ErrorInfo reason); its RetryInfo hint."""
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    if not isinstance(exc, grpc.aio.AioRpcError):
        return "", None
    kind = exc.code().name
    retry_s: float | None = None
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:  # trailers that contradict the status: keep the code alone
        status = None
    if (
        exc.code() is grpc.StatusCode.INTERNAL
        and status is None
        and exc.details() == WRITE_RACE_DETAILS
    ):
        return f"{kind} {WRITE_RACE}", None
    for detail in status.details if status is not None else ():
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            kind = f"{kind} {info.reason}"
        elif detail.Unpack(retry):
            retry_s = retry.retry_delay.ToNanoseconds() / 1e9
    return kind, retry_s


def _ends_input_by_finish(spec: WorkerSpec, k: int) -> bool:
    """Whether task ``k`` of a worker sends the finish message before half-closing."""
    return spec.end == "finish" or (spec.end == "alternate" and k % 2 == 1)


async def _run_grpc(spec: WorkerSpec) -> dict[str, Any]:
    """``grpc-stream`` / ``grpc-unary``: a load generator against a running sidecar."""
    import grpc
    from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
    from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc

    w = spec.workload
    config = pb.SynthesisConfig(format=pb.AUDIO_FORMAT_PCM, sample_rate_hz=w.sample_rate)
    tally = Tally(w.expected_bytes)
    async with grpc.aio.insecure_channel(spec.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = pb_grpc.SynthesizerStub(channel)

        async def read(call: Any, timer: Timer, end: str = "") -> None:
            started_s = 0.0
            async for response in call:
                kind = response.WhichOneof("response")
                if kind == "audio":
                    timer.audio(len(response.audio.data))
                elif kind == "started":
                    started_s = time.perf_counter() - timer.start
                elif kind == "completed":
                    # Where the time goes: the sidecar's own view of its first
                    # audio (from its session's start) and when Started arrived.
                    with tally.lock:
                        tally.breakdown["server_first_audio_ms"].append(
                            round(response.completed.first_audio_ms, 3)
                        )
                        tally.breakdown["client_started_ms"].append(round(started_s * 1000, 3))
            if end and timer.first is not None:
                with tally.lock:
                    tally.breakdown[f"ttfb_{end}_ms"].append(
                        round((timer.first - timer.start) * 1000, 3)
                    )
            timer.record(tally)

        async def stream_task(index: int, k: int, tally: Tally) -> None:
            timer = Timer()
            call = stub.StreamingSynthesize(timeout=spec.task_timeout_s)
            finish = _ends_input_by_finish(spec, k)
            try:
                await call.write(pb.StreamingSynthesizeRequest(config=config))
                for fragment in w.fragments:
                    await call.write(pb.StreamingSynthesizeRequest(text=fragment))
                if finish:
                    await call.write(pb.StreamingSynthesizeRequest(finish=pb.Finish()))
                await call.done_writing()  # the half-close, which every gRPC client sends
            except grpc.aio.AioRpcError:
                # A write racing the end of the call fails as INTERNAL (grpc/grpc#36066):
                # the call's own status, which reading it raises, is what gets counted
                # (a WRITE_RACE where grpcio lost that too).
                pass
            end = ("finish" if finish else "half-close") if spec.end == "alternate" else ""
            await read(call, timer, end)

        async def unary_task(index: int, k: int, tally: Tally) -> None:
            timer = Timer()
            request = pb.SynthesizeRequest(config=config, text=w.text)
            await read(stub.Synthesize(request, timeout=spec.task_timeout_s), timer)

        _emit("ready", warmup_s=None, warmup_sockets=0)
        one = stream_task if spec.mode == "grpc-stream" else unary_task
        return await _closed_loop(spec, one, tally, classify=_grpc_failure)


# ----------------------------------------------------------------- the SDK pool


def _run_sdk_pool(spec: WorkerSpec) -> dict[str, Any]:
    """``sdk-pool``: ``SpeechSynthesizerObjectPool``, one thread per worker, as its docs show."""
    import dashscope
    from dashscope.audio.tts_v2 import (
        AudioFormat,
        ResultCallback,
        SpeechSynthesizerObjectPool,
    )

    w = spec.workload
    dashscope.api_key = spec.api_key
    audio_format = next(
        f for f in AudioFormat if f.format == "pcm" and f.sample_rate == w.sample_rate
    )
    size = min(spec.level, 100)  # the SDK refuses more than 100
    started = time.perf_counter()
    pool: Any = SpeechSynthesizerObjectPool(max_size=size, url=spec.target)  # serial connects
    warmup = time.perf_counter() - started
    tally = Tally(w.expected_bytes)

    class Callback(ResultCallback):
        def __init__(self, timer: Timer) -> None:
            self.timer = timer

        def on_data(self, data: bytes) -> None:
            self.timer.audio(len(data))

    def one_task() -> None:
        timer = Timer()
        synthesizer = pool.borrow_synthesizer(
            model=w.model, voice=w.voice, format=audio_format, callback=Callback(timer)
        )
        try:
            for fragment in w.fragments:
                synthesizer.streaming_call(fragment)
            synthesizer.streaming_complete(complete_timeout_millis=spec.task_timeout_s * 1000)
            if synthesizer.get_response()["header"]["event"] != "task-finished":
                raise RuntimeError(f"task ended with {synthesizer.get_response()['header']}")
            timer.record(tally)
        finally:
            # Beyond 100 the pool hands out new objects and drops them on return
            # without closing them; close what it drops so sockets do not pile up.
            # It returns False when it drops one, and None (not True) when it keeps it.
            if pool.return_synthesizer(synthesizer) is False:
                synthesizer.close()

    go = threading.Event()
    stop_at = [0.0]

    def worker(offset: float) -> None:
        go.wait()
        time.sleep(offset)
        k = 0
        while time.perf_counter() < stop_at[0] and (spec.max_tasks == 0 or k < spec.max_tasks):
            try:
                one_task()
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                tally.error(exc)
            k += 1

    threads = [
        threading.Thread(target=worker, args=(o,), daemon=True, name=f"bench-{i}")
        for i, o in enumerate(_offsets(spec))
    ]
    for thread in threads:
        thread.start()
    _emit("ready", warmup_s=warmup, warmup_sockets=size)
    _wait_for_go()
    started = time.perf_counter()
    cpu_started = time.process_time()
    stop_at[0] = started + spec.ramp_s + spec.duration_s
    go.set()
    deadline = stop_at[0] + spec.task_timeout_s + 15
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    stuck = sum(thread.is_alive() for thread in threads)
    result = _result(tally, started, cpu_started, stuck_threads=stuck)
    for pooled in list(pool._pool):  # the SDK's shutdown() leaves its sockets open
        pooled.synthesizer.close()
    return result


# ----------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m cosyvoice_sidecar_bench.worker SPEC_JSON\n")
        return 2
    spec = WorkerSpec.from_json(args[0])
    if spec.mode == "sdk-pool":
        result = _run_sdk_pool(spec)
    elif spec.mode in ("cold", "floor"):
        result = asyncio.run(_run_upstream(spec))
    elif spec.mode in ("grpc-stream", "grpc-unary"):
        result = asyncio.run(_run_grpc(spec))
    else:
        sys.stderr.write(f"unknown worker mode {spec.mode!r}\n")
        return 2
    _emit("result", **result)
    sys.stdout.flush()
    # The SDK's threads (its reconnect loop, websocket-client readers) never end
    # on their own; the result is out, so leave without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

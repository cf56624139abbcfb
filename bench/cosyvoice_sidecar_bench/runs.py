"""One measured run: a client mode's worker, or a serving process and the load it takes.

Each run waits until the emulator is quiet, starts its processes, opens the
measurement window (the emulator's counters, every process's CPU, the
machine's busy time), lets the load run, and folds what it measured into a
:class:`~cosyvoice_sidecar_bench.stats.RunResult` on the :class:`RunContext`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cosyvoice_sidecar_bench.grpc_floor import FloorSpec
from cosyvoice_sidecar_bench.loadgen import Loadgen
from cosyvoice_sidecar_bench.procs import (
    Child,
    ChildError,
    EmulatorClient,
    cpu_seconds,
    machine_busy_seconds,
    main_thread_cpu_seconds,
    main_thread_waits,
    peak_rss_mb,
)
from cosyvoice_sidecar_bench.settings import API_KEY, BenchSettings, Progress, loadgen_call
from cosyvoice_sidecar_bench.stats import RunResult
from cosyvoice_sidecar_bench.worker import WorkerSpec
from cosyvoice_sidecar_bench.workload import Workload

__all__ = ["RunContext", "client_run", "sidecar_slot"]


@dataclass
class RunContext:
    """What every run of one bench needs, and what the runs add up."""

    settings: BenchSettings
    emulator: Child
    client: EmulatorClient
    workload: Workload
    ramp_s: float
    log_dir: Path
    progress: Progress
    steps: int
    loadgen: Loadgen | None = None  # None when no mode needs one
    sink: Child | None = None  # the OTLP sink the sidecars export to (--telemetry otlp)
    sink_address: str = ""
    redis_url: str = ""  # the Redis of the sidecar-fleet mode
    done: int = 0
    results: list[RunResult] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    serve_flags: frozenset[str] = frozenset()  # the flags `serve --help` lists
    sidecar_commands: dict[str, list[str]] = field(default_factory=dict)

    def step(self, text: str) -> None:
        self.progress(f"[{self.done + 1}/{self.steps}] {text}")


def _pairs(items: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(name, value) for name, _, value in (item.partition("=") for item in items)]


def _worker_spec(
    ctx: RunContext, mode: str, level: int, target: str, end: str = "half-close"
) -> WorkerSpec:
    s = ctx.settings
    return WorkerSpec(
        mode=mode,
        level=level,
        target=target,
        workload=ctx.workload,
        ramp_s=ctx.ramp_s,
        duration_s=s.duration_s,
        task_timeout_s=s.task_timeout_s,
        api_key=API_KEY,
        end=end,
    )


def _result_timeout(ctx: RunContext) -> float:
    return ctx.ramp_s + ctx.settings.duration_s + ctx.settings.task_timeout_s + 30


async def client_run(ctx: RunContext, repeat: int, level: int, mode: str) -> None:
    """cold / floor / sdk-pool: the client process is the serving process."""
    result = RunResult(mode, level, repeat)
    name = f"{mode}-L{level}-r{repeat}"
    spec = _worker_spec(ctx, mode, level, ctx.client.ws_url)
    before = await ctx.client.wait_quiet(30)
    worker = Child(
        name,
        ["-m", "cosyvoice_sidecar_bench.worker", spec.to_json()],
        log_dir=ctx.log_dir,
        stdin=True,
    )
    sockets = min(level, 100) if mode == "sdk-pool" else level if mode == "floor" else 0
    ctx.step(f"repeat {repeat + 1}, {level} streams, {mode}: warming {sockets} sockets")
    try:
        await worker.start()
        ready = await worker.json_line("ready", timeout=30 + 0.5 * sockets)
        result.warmup_s = ready["warmup_s"]
        result.warmup_sockets = ready["warmup_sockets"]
        ctx.step(f"repeat {repeat + 1}, {level} streams, {mode}: running")
        data = await _measure(ctx, worker, result, before, serving_pid=None)
        result.cpu_s = data["cpu_s"]
        result.peak_rss_mb = data["peak_rss_mb"]
        await worker.wait(30)
    except (ChildError, OSError) as exc:
        result.failure = str(exc)
        await worker.stop(5)
    ctx.results.append(result)
    ctx.done += 1


async def _measure(
    ctx: RunContext,
    worker: Child,
    result: RunResult,
    before: dict[str, Any],
    serving_pid: int | None,
) -> dict[str, Any]:
    """Start the worker's window and fold its result and the counters into ``result``."""
    at_go = await ctx.client.stats()
    emulator_cpu = cpu_seconds(ctx.emulator.pid)
    sink_cpu = cpu_seconds(ctx.sink.pid) if ctx.sink else 0.0
    serving_cpu = cpu_seconds(serving_pid) if serving_pid else 0.0
    # The sidecar's event loop; an asyncio client mode reports its own (loop_cpu_s).
    loop_cpu = main_thread_cpu_seconds(serving_pid) if serving_pid else 0.0
    waits = main_thread_waits(serving_pid) if serving_pid else 0
    profiler = await _start_profiler(ctx, result, serving_pid)
    machine_busy = machine_busy_seconds()
    await worker.send("go\n")
    data = await worker.json_line("result", timeout=_result_timeout(ctx))
    machine_busy = machine_busy_seconds() - machine_busy
    if serving_pid:
        result.loop_waits = main_thread_waits(serving_pid) - waits
        result.loop_cpu_s = main_thread_cpu_seconds(serving_pid) - loop_cpu
        result.cpu_s = cpu_seconds(serving_pid) - serving_cpu
        result.peak_rss_mb = peak_rss_mb(serving_pid)
    else:
        result.loop_cpu_s = data.get("loop_cpu_s", 0.0)
        result.loop_waits = data.get("loop_waits", 0)
    result.emulator_cpu_s = cpu_seconds(ctx.emulator.pid) - emulator_cpu
    ours = result.emulator_cpu_s + data["cpu_s"] + (result.cpu_s if serving_pid else 0.0)
    if ctx.sink is not None:  # the bench's own process too, not other load
        ours += cpu_seconds(ctx.sink.pid) - sink_cpu
    result.other_cpu_s = max(0.0, machine_busy - ours)
    after = await ctx.client.stats()
    if profiler is not None:
        await profiler.wait(30)
    keys = (
        "tasks",
        "errors",
        "audio_mismatches",
        "error_samples",
        "error_kinds",
        "ttfb_ms",
        "gaps_ms",
        "breakdown",
    )
    for key in keys:
        setattr(result, key, data[key])
    result.elapsed_s = data["elapsed_s"]
    result.client_cpu_s = data["cpu_s"]
    result.connections_opened = after["connections_opened"] - at_go["connections_opened"]
    result.warmup_connections_opened = at_go["connections_opened"] - before["connections_opened"]
    result.emulator_outcomes = {
        k: v - at_go["outcomes"].get(k, 0)
        for k, v in after["outcomes"].items()
        if v != at_go["outcomes"].get(k, 0)
    }
    if data.get("stuck_threads"):
        result.failure = f"{data['stuck_threads']} worker threads did not finish in time"
    return data


async def _start_profiler(ctx: RunContext, result: RunResult, pid: int | None) -> Child | None:
    """Attach py-spy to the sidecar for the window of a streaming run, if asked."""
    directory = ctx.settings.profile_dir
    if directory is None or pid is None or result.mode == "sidecar-unary":
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    path = directory / f"{result.mode}-L{result.level}-r{result.repeat}.txt"
    seconds = max(1, math.ceil(ctx.ramp_s + ctx.settings.duration_s))
    # py-spy is not a Python module: run the binary itself instead of sys.executable.
    profiler = Child(
        f"py-spy-{result.mode}-L{result.level}-r{result.repeat}",
        [
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            *(["--native"] if ctx.settings.profile_native else ["--nonblocking"]),
            "--format",
            "raw",
            "--output",
            str(path),
        ],
        log_dir=ctx.log_dir,
        program=py_spy,
    )
    await profiler.start()
    ctx.profiles.append(str(path))
    return profiler


@dataclass(frozen=True)
class _Server:
    """How to start a serving process: ``python -m entry *args`` with ``env``."""

    entry: str
    args: list[str]
    env: dict[str, str]
    warms_pool: bool  # a sidecar: its pool warm-up is timed


def _server(ctx: RunContext, variant: str, level: int, repeat: int) -> _Server:
    """The serving process of a slot: a sidecar (``variant``), or the bare gRPC floor."""
    s = ctx.settings
    if variant == "grpc-floor":
        w = ctx.workload
        spec = FloorSpec(
            listen="127.0.0.1:0",
            first_audio_ms=w.intrinsic_ms,
            chunk_ms=s.chunk_ms,
            realtime_factor=s.realtime_factor,
            sample_rate=w.sample_rate,
            audio_bytes=w.expected_bytes,
            text=w.text,
        )
        return _Server("cosyvoice_sidecar_bench.grpc_floor", [spec.to_json()], {}, False)
    entry = "cosyvoice_sidecar_bench.uvloop_main" if variant == "sidecar-uvloop" else "sidecar"
    serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        ctx.client.ws_url,
        "--pool-min-idle",
        str(level),
        "--pool-max-size",
        str(level),
        "--acquire-timeout",
        str(s.acquire_timeout_s),
    ]
    if "--max-streams" in ctx.serve_flags and not any(
        a.startswith("--max-streams") for a in s.sidecar_args
    ):
        # Admission must never refuse the bench's own streams (a closed loop can
        # briefly hold a finished call's slot while its next call arrives).
        serve += ["--max-streams", str(max(2 * level, 256))]
    if variant == "sidecar-fleet":
        # The quota on, with room for every stream: what it costs, not what it holds back.
        serve += ["--fleet-redis-url", ctx.redis_url, "--fleet-quota", str(2 * level)]
        serve += ["--fleet-key", f"bench-{level}-{repeat}"]
    serve += s.sidecar_args
    env = {"DASHSCOPE_API_KEY": API_KEY, **dict(_pairs(s.sidecar_env))}
    if ctx.sink_address:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{ctx.sink_address}"
        env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    if variant == "sidecar-b":
        serve += s.b_sidecar_args
        env.update(_pairs(s.b_sidecar_env))
    ctx.sidecar_commands[f"{variant} {level}"] = ["cosyvoice-sidecar", *serve]
    return _Server(entry, serve, env, True)


async def sidecar_slot(
    ctx: RunContext, repeat: int, level: int, modes: tuple[str, ...], *, variant: str
) -> None:
    """One serving process for ``level``: warm-up timed, then each of its modes' runs."""
    before = await ctx.client.wait_quiet(30)
    name = f"{variant}-L{level}-r{repeat}"
    server = _server(ctx, variant, level, repeat)
    process = Child(name, ["-m", server.entry, *server.args], log_dir=ctx.log_dir, env=server.env)
    results = {mode: RunResult(mode, level, repeat) for mode in modes}
    ran = 0
    warming = f"warming {level} sockets" if server.warms_pool else "starting"
    ctx.step(f"repeat {repeat + 1}, {level} streams, {variant}: {warming}")
    try:
        launched = time.time()
        await process.start()
        match = await process.expect(r"^serving on (\S+)$", timeout=60 + 0.05 * level)
        ready = time.time()
        if server.warms_pool:
            warm = _pool_warm_s(process.log_path, ready)
            for result in results.values():
                result.warmup_s = warm if warm is not None else ready - launched
                result.warmup_sockets = level
        for mode in modes:
            result = results[mode]
            worker_mode, end = loadgen_call(mode)
            spec = _worker_spec(ctx, worker_mode, level, match.group(1), end)
            assert ctx.loadgen is not None  # run_bench prepares it for these modes
            worker = Child(
                f"{mode}-loadgen-L{level}-r{repeat}",
                [*ctx.loadgen.args, spec.to_json()],
                log_dir=ctx.log_dir,
                stdin=True,
                program=ctx.loadgen.program,
            )
            ctx.step(f"repeat {repeat + 1}, {level} streams, {mode}: running")
            try:
                await worker.start()
                await worker.json_line("ready", timeout=30)
                await _measure(ctx, worker, result, before, serving_pid=process.pid)
                await worker.wait(30)
            except (ChildError, OSError) as exc:
                result.failure = str(exc)
                await worker.stop(5)
            before = await ctx.client.wait_quiet(30)
            ran += 1
            ctx.done += 1
    except (ChildError, OSError) as exc:
        for result in list(results.values())[ran:]:
            result.failure = str(exc)
        ctx.done += len(modes) - ran
    finally:
        code = await process.stop(20)
        if code not in (0, None):
            for result in results.values():
                result.failure = result.failure or f"{variant} exited with {code}"
    ctx.results.extend(results.values())


_LOG_TIME: Final = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*serving on ")


def _pool_warm_s(log_path: Path, ready_at: float) -> float | None:
    """Return the pool's warm-up: from the sidecar's 'serving on' log line to its ready line.

    The log line is written when the server starts and the pool begins to
    warm; stdout says "serving on" once the pool is warm. None if the log
    line is missing (e.g. a --log-level above info).
    """
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            match = _LOG_TIME.match(line)
            if match:
                logged = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
                at = logged.timestamp() + int(match.group(2)) / 1000
                return max(0.0, ready_at - at)
    return None

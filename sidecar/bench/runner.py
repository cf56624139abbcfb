"""The schedule of one bench run: the emulator, then every mode at every level.

Repeats are the outer loop and the mode order rotates from one level to the
next, so slow drift on a shared machine (another build starting, thermal
throttling) hits every mode alike instead of whichever ran last. ``sidecar``
and ``sidecar-unary`` share one sidecar process per level and repeat (the
process is started with ``--pool-min-idle N --pool-max-size N`` and its pool
warm-up is timed); every other run gets fresh client processes. The sidecar
modes are driven by the load generator of ``settings.loadgen``
(:mod:`sidecar.bench.loadgen`): the Go one is built once, before the emulator
starts, and runs in a fresh process for every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sidecar.bench import machine
from sidecar.bench.loadgen import LOADGENS, Loadgen, LoadgenError, prepare
from sidecar.bench.procs import (
    Child,
    ChildError,
    EmulatorClient,
    cpu_seconds,
    machine_busy_seconds,
    peak_rss_mb,
)
from sidecar.bench.stats import Row, RunResult, aggregate
from sidecar.bench.worker import WorkerSpec
from sidecar.bench.workload import Workload

__all__ = ["DEFAULT_MODES", "LOADGEN_MODES", "MODES", "BenchSettings", "run_bench"]

MODES: Final = (
    "cold",
    "sdk-pool",
    "floor",
    "sidecar",
    "sidecar-unary",
    "sidecar-uvloop",
    "sidecar-b",
)
DEFAULT_MODES: Final = ("cold", "sdk-pool", "floor", "sidecar", "sidecar-unary")
SCHEMA: Final = "cosyvoice-sidecar-bench/1"
API_KEY: Final = "sk-bench-local"  # the emulator accepts any key; never a real one
_SIDECAR_MODES: Final = {"sidecar": "grpc-stream", "sidecar-unary": "grpc-unary"}
# The modes a gRPC load generator drives (each runs a sidecar process).
LOADGEN_MODES: Final = frozenset({*_SIDECAR_MODES, "sidecar-uvloop", "sidecar-b"})

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    """Everything one bench run needs; built by :mod:`sidecar.bench.cli`."""

    levels: tuple[int, ...] = (1, 20, 100, 200, 400)
    modes: tuple[str, ...] = DEFAULT_MODES
    repeats: int = 2
    duration_s: float = 4.0
    ramp_s: float | None = None  # None: one task length
    task_timeout_s: float = 30.0
    handshake_delay_s: float = 0.1
    first_packet_delay_s: float = 0.15
    realtime_factor: float = 0.25
    chunk_ms: int = 100
    knobs: tuple[str, ...] = ()  # further emulator knobs, NAME=VALUE
    text: str = ""
    fragments: int = 2
    sample_rate: int = 22050
    acquire_timeout_s: float = 120.0
    sidecar_args: tuple[str, ...] = ()
    sidecar_env: tuple[str, ...] = ()  # NAME=VALUE for every sidecar process
    # The "sidecar-b" mode: the same sidecar with these extra arguments and
    # environment, interleaved with "sidecar" (e.g. tracing on vs off).
    b_sidecar_args: tuple[str, ...] = ()
    b_sidecar_env: tuple[str, ...] = ()
    otlp_sink: bool = False  # sidecar-b exports over OTLP/gRPC to a sink process (otlp_sink.py)
    profile_dir: Path | None = None
    profile_native: bool = False  # py-spy --native (pauses the process per sample)
    log_dir: Path | None = None
    preset: str = "default"
    label: str = ""  # free text recorded in the report, e.g. what changed since the last run
    loadgen: str = "go"  # what drives the sidecar modes: "go" or "python" (sidecar.bench.loadgen)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown:
            raise ValueError(f"unknown mode {unknown[0]!r}; modes: {', '.join(MODES)}")
        if not self.modes or not self.levels or min(self.levels) < 1:
            raise ValueError("need at least one mode and levels >= 1")
        if self.repeats < 1 or self.duration_s <= 0 or self.task_timeout_s <= 0:
            raise ValueError("repeats must be >= 1, duration and task timeout > 0")
        if self.fragments < 1:
            raise ValueError("fragments must be >= 1")
        if self.loadgen not in LOADGENS:
            raise ValueError(f"unknown load generator {self.loadgen!r}; choose from go, python")
        if self.otlp_sink and "sidecar-b" not in self.modes:
            raise ValueError("--otlp-sink exports from the sidecar-b mode: add it to --modes")
        for pair in (*self.sidecar_env, *self.b_sidecar_env, *self.knobs):
            if "=" not in pair:
                raise ValueError(f"expected NAME=VALUE, not {pair!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("profile_dir", "log_dir"):
            data[key] = str(data[key]) if data[key] else None
        return data


@dataclass
class _Context:
    settings: BenchSettings
    emulator: Child
    client: EmulatorClient
    workload: Workload
    ramp_s: float
    log_dir: Path
    progress: Progress
    steps: int
    loadgen: Loadgen | None = None  # None when no mode needs one
    sink: Child | None = None  # the OTLP sink sidecar-b exports to (--otlp-sink)
    sink_address: str = ""
    done: int = 0
    results: list[RunResult] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    serve_flags: frozenset[str] = frozenset()  # the flags `serve --help` lists
    sidecar_commands: dict[str, list[str]] = field(default_factory=dict)

    def step(self, text: str) -> None:
        self.progress(f"[{self.done + 1}/{self.steps}] {text}")


def _slots(modes: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Group modes into schedule slots: the two sidecar RPCs share one sidecar process."""
    slots: list[tuple[str, ...]] = []
    shared = tuple(m for m in modes if m in _SIDECAR_MODES)
    for mode in modes:
        if mode in _SIDECAR_MODES:
            if shared and mode == shared[0]:
                slots.append(shared)
        else:
            slots.append((mode,))
    return slots


def schedule(settings: BenchSettings) -> Iterator[tuple[int, int, tuple[str, ...]]]:
    """Yield (repeat, level, modes of one slot) in run order, interleaved and rotated."""
    slots = _slots(settings.modes)
    turn = 0
    for repeat in range(settings.repeats):
        levels = settings.levels if repeat % 2 == 0 else tuple(reversed(settings.levels))
        for level in levels:
            shift = turn % len(slots)
            for slot in slots[shift:] + slots[:shift]:
                yield repeat, level, slot if repeat % 2 == 0 else tuple(reversed(slot))
            turn += 1


async def run_bench(settings: BenchSettings, progress: Progress) -> dict[str, Any]:
    """Run the whole bench; return the JSON-ready report (rows, runs, warm-up, machine)."""
    started = time.time()
    log_dir = settings.log_dir or Path(tempfile.mkdtemp(prefix="cosyvoice-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if settings.profile_dir is not None:
        settings.profile_dir.mkdir(parents=True, exist_ok=True)
    machine_before = machine.describe()
    loadgen = await _prepare_loadgen(settings, log_dir, progress)
    emulator = Child("emulator", _emulator_args(settings), log_dir=log_dir)
    sink = (
        Child("otlp-sink", ["-m", "sidecar.bench.otlp_sink"], log_dir=log_dir, stdin=True)
        if settings.otlp_sink
        else None
    )
    sink_counts: dict[str, Any] | None = None
    progress("starting the emulator")
    await emulator.start()
    failed = True
    try:
        match = await emulator.expect(r"^emulator on (ws://\S+)$", timeout=30)
        client = EmulatorClient(match.group(1))
        knobs = await client.knobs()
        workload = Workload.build(settings.text, settings.fragments, settings.sample_rate, knobs)
        ramp = (
            settings.ramp_s
            if settings.ramp_s is not None
            else workload.task_seconds(settings.realtime_factor)
        )
        plan = list(schedule(settings))
        serve_flags = await _serve_flags(log_dir)
        sink_address = ""
        if sink is not None:
            await sink.start()
            sink_address = (await sink.json_line("ready", timeout=30))["address"]
        ctx = _Context(
            settings,
            emulator,
            client,
            workload,
            ramp,
            log_dir,
            progress,
            steps=sum(len(slot) for _, _, slot in plan),
            loadgen=loadgen,
            sink=sink,
            sink_address=sink_address,
            serve_flags=serve_flags,
        )
        for repeat, level, slot in plan:
            if emulator.proc is not None and emulator.proc.returncode is not None:
                raise ChildError(f"the emulator died; see {emulator.log_path}")
            if slot[0] in _SIDECAR_MODES:
                await _sidecar_slot(ctx, repeat, level, slot, variant="sidecar")
            elif slot[0] in ("sidecar-uvloop", "sidecar-b"):
                await _sidecar_slot(ctx, repeat, level, slot, variant=slot[0])
            else:
                await _client_run(ctx, repeat, level, slot[0])
        failed = any(r.failure for r in ctx.results)
        if sink is not None:
            await sink.send("counts\n")
            sink_counts = await sink.json_line("counts", timeout=30)
            sink_counts.pop("event")
    finally:
        if sink is not None:
            await sink.stop()
        await emulator.stop()
        if settings.log_dir is None and not failed:
            shutil.rmtree(log_dir, ignore_errors=True)
    rows = _rows(ctx.results, settings, workload.intrinsic_ms)
    return {
        "schema": SCHEMA,
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": {**machine_before, "loadavg_end": machine.loadavg()},
        "settings": {**settings.to_dict(), "ramp_s": ramp},
        # What drove the sidecar modes, e.g. {"name": "go", "version": "go1.26.8"}.
        "loadgen": loadgen.describe() if loadgen else None,
        "emulator_knobs": knobs,
        "workload": workload.to_dict(),
        "rows": [row.to_dict() for row in rows],
        "warmup": _warmups(rows),
        "runs": [r.to_dict(samples=False) for r in ctx.results],
        "sidecar_commands": ctx.sidecar_commands,
        # What sidecar-b exported to the OTLP sink over the whole run (--otlp-sink).
        "otlp_sink": sink_counts,
        "profiles": ctx.profiles,
        "logs": str(log_dir) if (settings.log_dir or failed) else None,
    }


async def _prepare_loadgen(
    settings: BenchSettings, log_dir: Path, progress: Progress
) -> Loadgen | None:
    """Build (go) or pick (python) the load generator, if a mode needs one."""
    if not LOADGEN_MODES.intersection(settings.modes):
        return None
    if settings.loadgen == "go":
        progress("building the Go load generator (go build ./cmd/loadgen in clients/go)")
    try:
        return await prepare(settings.loadgen, log_dir)
    except LoadgenError:
        if settings.log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)
        raise


def _pairs(items: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(name, value) for name, _, value in (item.partition("=") for item in items)]


async def _serve_flags(log_dir: Path) -> frozenset[str]:
    """Return the flags this sidecar's ``serve --help`` lists (newer ones need setting)."""
    child = Child("serve-help", ["-m", "sidecar", "serve", "--help"], log_dir=log_dir)
    await child.start()
    assert child.proc is not None
    assert child.proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            text = (await child.proc.stdout.read()).decode()
    except TimeoutError:
        text = ""
    await child.wait(5)
    return frozenset(re.findall(r"--[a-z][a-z0-9-]+", text))


def _emulator_args(s: BenchSettings) -> list[str]:
    args = [
        "-m",
        "sidecar",
        "emulate",
        "--handshake-delay",
        str(s.handshake_delay_s),
        "--first-packet-delay",
        str(s.first_packet_delay_s),
        "--realtime-factor",
        str(s.realtime_factor),
        "--chunk-ms",
        str(s.chunk_ms),
    ]
    for knob in s.knobs:
        args += ["--knob", knob]
    return args


def _rows(results: list[RunResult], s: BenchSettings, intrinsic_ms: float) -> list[Row]:
    rows = []
    for level in s.levels:
        for mode in s.modes:
            runs = [r for r in results if r.mode == mode and r.level == level]
            if runs:
                rows.append(aggregate(runs, intrinsic_ms))
    return rows


def _warmups(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {"mode": r.mode, "level": r.level, "sockets": r.warmup_sockets, "seconds": r.warmup_s}
        for r in rows
        if r.warmup_s is not None and r.mode != "sidecar-unary"
    ]


def _worker_spec(ctx: _Context, mode: str, level: int, target: str) -> WorkerSpec:
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
    )


def _result_timeout(ctx: _Context) -> float:
    return ctx.ramp_s + ctx.settings.duration_s + ctx.settings.task_timeout_s + 30


async def _client_run(ctx: _Context, repeat: int, level: int, mode: str) -> None:
    """cold / floor / sdk-pool: the client process is the serving process."""
    result = RunResult(mode, level, repeat)
    name = f"{mode}-L{level}-r{repeat}"
    spec = _worker_spec(ctx, mode, level, ctx.client.ws_url)
    before = await ctx.client.wait_quiet(30)
    worker = Child(
        name, ["-m", "sidecar.bench.worker", spec.to_json()], log_dir=ctx.log_dir, stdin=True
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
    ctx: _Context,
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
    profiler = await _start_profiler(ctx, result, serving_pid)
    machine_busy = machine_busy_seconds()
    await worker.send("go\n")
    data = await worker.json_line("result", timeout=_result_timeout(ctx))
    machine_busy = machine_busy_seconds() - machine_busy
    if serving_pid:
        result.cpu_s = cpu_seconds(serving_pid) - serving_cpu
        result.peak_rss_mb = peak_rss_mb(serving_pid)
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


async def _start_profiler(ctx: _Context, result: RunResult, pid: int | None) -> Child | None:
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


async def _sidecar_slot(
    ctx: _Context, repeat: int, level: int, modes: tuple[str, ...], *, variant: str
) -> None:
    """One sidecar process for ``level``: warm-up timed, then each RPC mode's run."""
    s = ctx.settings
    before = await ctx.client.wait_quiet(30)
    entry = "sidecar.bench.uvloop_main" if variant == "sidecar-uvloop" else "sidecar"
    name = f"{variant}-L{level}-r{repeat}"
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
    serve += s.sidecar_args
    env = {"DASHSCOPE_API_KEY": API_KEY, **dict(_pairs(s.sidecar_env))}
    if variant == "sidecar-b":
        serve += s.b_sidecar_args
        env.update(_pairs(s.b_sidecar_env))
        if ctx.sink_address:
            env.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{ctx.sink_address}")
            env.setdefault("OTEL_EXPORTER_OTLP_INSECURE", "true")
    ctx.sidecar_commands[f"{variant} {level}"] = ["cosyvoice-sidecar", *serve]
    sidecar = Child(name, ["-m", entry, *serve], log_dir=ctx.log_dir, env=env)
    results = {mode: RunResult(mode, level, repeat) for mode in modes}
    ran = 0
    ctx.step(
        f"repeat {repeat + 1}, {level} streams, {name.split('-L')[0]}: warming {level} sockets"
    )
    try:
        launched = time.time()
        await sidecar.start()
        match = await sidecar.expect(r"^serving on (\S+)$", timeout=60 + 0.05 * level)
        ready = time.time()
        warm = _pool_warm_s(sidecar.log_path, ready)
        for result in results.values():
            result.warmup_s = warm if warm is not None else ready - launched
            result.warmup_sockets = level
        for mode in modes:
            result = results[mode]
            worker_mode = _SIDECAR_MODES.get(mode, "grpc-stream")
            spec = _worker_spec(ctx, worker_mode, level, match.group(1))
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
                await _measure(ctx, worker, result, before, serving_pid=sidecar.pid)
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
        code = await sidecar.stop(20)
        if code not in (0, None):
            for result in results.values():
                result.failure = result.failure or f"the sidecar exited with {code}"
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

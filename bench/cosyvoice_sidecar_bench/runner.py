"""The schedule of one bench run: the emulator, then every mode at every level.

Repeats are the outer loop and the mode order rotates from one level to the
next, so slow drift on a shared machine (another build starting, thermal
throttling) hits every mode alike instead of whichever ran last. ``sidecar``,
``sidecar-finish`` and ``sidecar-unary`` share one sidecar process per level
and repeat (the process is started with ``--pool-min-idle N --pool-max-size
N`` and its pool warm-up is timed); each of the other serving modes
(:data:`~cosyvoice_sidecar_bench.settings.SIDECAR_VARIANTS`) gets its own
process, and every other run fresh client processes. The gRPC modes are
driven by the load generator of ``settings.loadgen``
(:mod:`cosyvoice_sidecar_bench.loadgen`): the Go one is built once, before the
emulator starts, and runs in a fresh process for every run. With telemetry
on (the default) every sidecar exports to one stand-in OTLP collector
process; with the ``sidecar-fleet`` mode a ``redis-server`` runs too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from cosyvoice_sidecar_bench import machine
from cosyvoice_sidecar_bench.loadgen import Loadgen, LoadgenError, prepare
from cosyvoice_sidecar_bench.procs import (
    Child,
    ChildError,
    EmulatorClient,
)
from cosyvoice_sidecar_bench.redis_server import RedisServer
from cosyvoice_sidecar_bench.runs import RunContext, client_run, sidecar_slot
from cosyvoice_sidecar_bench.settings import (
    DEFAULT_MODES,
    LOADGEN_MODES,
    MODES,
    SIDECAR_MODES,
    SIDECAR_VARIANTS,
    BenchSettings,
    Progress,
)
from cosyvoice_sidecar_bench.stats import Row, RunResult, aggregate
from cosyvoice_sidecar_bench.workload import Workload

__all__ = [
    "DEFAULT_MODES",
    "LOADGEN_MODES",
    "MODES",
    "SCHEMA",
    "BenchSettings",
    "emulator_args",
    "exports_telemetry",
    "run_bench",
    "schedule",
]

SCHEMA: Final = "cosyvoice-sidecar-bench/2"


def _slots(modes: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Group modes into schedule slots: the ways to call one sidecar share its process."""
    slots: list[tuple[str, ...]] = []
    shared = tuple(m for m in modes if m in SIDECAR_MODES)
    for mode in modes:
        if mode in SIDECAR_MODES:
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
    log_dir = settings.run_log_dir("cosyvoice-bench-")
    if settings.profile_dir is not None:
        settings.profile_dir.mkdir(parents=True, exist_ok=True)
    machine_before = machine.describe()
    loadgen = await _prepare_loadgen(settings, log_dir, progress)
    emulator = Child("emulator", emulator_args(settings), log_dir=log_dir)
    sink = (
        Child("otlp-sink", ["-m", "cosyvoice_sidecar_bench.otlp_sink"], log_dir=log_dir, stdin=True)
        if exports_telemetry(settings)
        else None
    )
    sink_counts: dict[str, Any] | None = None
    progress("starting the emulator")
    await emulator.start()
    failed = True
    stack = contextlib.AsyncExitStack()
    try:
        redis_url = ""
        if "sidecar-fleet" in settings.modes:
            redis_url = (
                await stack.enter_async_context(RedisServer(log_path=log_dir / "redis-server.log"))
            ).url
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
        ctx = RunContext(
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
            redis_url=redis_url,
            serve_flags=serve_flags,
        )
        for repeat, level, slot in plan:
            if emulator.proc is not None and emulator.proc.returncode is not None:
                raise ChildError(f"the emulator died; see {emulator.log_path}")
            if slot[0] in SIDECAR_MODES:
                await sidecar_slot(ctx, repeat, level, slot, variant="sidecar")
            elif slot[0] in SIDECAR_VARIANTS:
                await sidecar_slot(ctx, repeat, level, slot, variant=slot[0])
            else:
                await client_run(ctx, repeat, level, slot[0])
        failed = any(r.failure for r in ctx.results)
        if sink is not None:
            await sink.send("counts\n")
            sink_counts = await sink.json_line("counts", timeout=30)
            sink_counts.pop("event")
    finally:
        if sink is not None:
            await sink.stop()
        await stack.aclose()
        await emulator.stop()
        if settings.log_dir is None and not failed:
            shutil.rmtree(log_dir, ignore_errors=True)
    rows = _rows(ctx.results, settings, workload.intrinsic_ms)
    return {
        "schema": SCHEMA,
        "started_at": machine.timestamp(started),
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
        # What the sidecars exported to the OTLP sink over the whole run (--telemetry otlp).
        "otlp_sink": sink_counts,
        "profiles": ctx.profiles,
        "logs": str(log_dir) if (settings.log_dir or failed) else None,
    }


def exports_telemetry(settings: BenchSettings) -> bool:
    """Whether a sidecar process runs and exports to the stand-in collector."""
    sidecars = LOADGEN_MODES.difference({"grpc-floor"})
    return settings.telemetry == "otlp" and bool(sidecars.intersection(settings.modes))


async def _prepare_loadgen(
    settings: BenchSettings, log_dir: Path, progress: Progress
) -> Loadgen | None:
    """Build (go) or pick (python) the load generator, if a mode needs one."""
    if not LOADGEN_MODES.intersection(settings.modes):
        return None
    try:
        return await prepare(settings.loadgen, log_dir, progress)
    except LoadgenError:
        if settings.log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)
        raise


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


def emulator_args(s: BenchSettings, *knobs: str) -> list[str]:
    """The ``emulate`` command line of the settings, with further ``knobs`` (NAME=VALUE)."""
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
    for knob in (*s.knobs, *knobs):
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

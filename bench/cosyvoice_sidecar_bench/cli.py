"""``cosyvoice-sidecar bench``: flags, the ``--quick`` preset, progress, and the outputs.

``cosyvoice-sidecar-bench soak ...`` (and ``cosyvoice-sidecar soak``) runs
:mod:`cosyvoice_sidecar_bench.soak` instead.

:func:`add_arguments` declares the flags on a parser; :func:`run` (a
coroutine) runs the bench and returns the exit code: 0 when every run
completed (errors inside runs are measured, not fatal), 1 when a run broke,
the Go load generator did not build or the sequential check failed, 2 for
bad flags or a missing tool. The Markdown report goes to stdout, progress to
stderr. ``--sequential N`` runs the sequential check
(:mod:`~cosyvoice_sidecar_bench.sequential`) and ``--fleet N`` the fleet
comparison (:mod:`~cosyvoice_sidecar_bench.fleet`) instead of the main bench.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from cosyvoice_sidecar_bench import fleet, loadgen, report, sequential
from cosyvoice_sidecar_bench.procs import ChildError
from cosyvoice_sidecar_bench.redis_server import RedisServer, RedisUnavailable
from cosyvoice_sidecar_bench.runner import (
    DEFAULT_MODES,
    LOADGEN_MODES,
    MODES,
    BenchSettings,
    run_bench,
)
from cosyvoice_sidecar_bench.settings import TELEMETRY
from cosyvoice_sidecar_bench.workload import DEFAULT_TEXT

__all__ = ["QUICK", "add_arguments", "run", "settings_from_args"]

# The CI smoke preset: every mode, two small levels, one short repeat (seconds).
QUICK: Final[dict[str, Any]] = {
    "levels": (1, 4),
    "repeats": 1,
    "duration_s": 0.5,
    "ramp_s": 0.2,
    "task_timeout_s": 15.0,
}


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be integers, not {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels must be integers >= 1")
    return levels


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown mode {unknown[0] if unknown else '(none)'!r}; modes: {', '.join(MODES)}"
        )
    return modes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the bench's flags on ``parser``."""
    d = BenchSettings()
    run = parser.add_argument_group("what to run")
    run.add_argument(
        "--levels",
        type=_levels,
        help=f"concurrency levels, comma-separated (default {','.join(map(str, d.levels))})",
    )
    run.add_argument(
        "--modes",
        type=_modes,
        help=f"modes, comma-separated, from {', '.join(MODES)} "
        f"(default {','.join(DEFAULT_MODES)}; sidecar ends each stream's input by "
        "half-close, sidecar-finish with the finish message; grpc-floor is a bare grpc.aio "
        "server streaming canned audio; sidecar-uvloop needs uvloop; sidecar-b is "
        "the sidecar with --b-sidecar-arg/--b-sidecar-env; sidecar-fleet the sidecar with "
        "the fleet quota on a local redis-server)",
    )
    run.add_argument("--repeats", type=int, help=f"repeats of every run (default {d.repeats})")
    run.add_argument(
        "--duration",
        dest="duration_s",
        type=float,
        help=f"seconds of load per run after the ramp (default {d.duration_s:g})",
    )
    run.add_argument(
        "--ramp",
        dest="ramp_s",
        type=float,
        help="seconds over which the streams start (default: one task length)",
    )
    run.add_argument(
        "--task-timeout",
        dest="task_timeout_s",
        type=float,
        help="seconds one task may take before it counts as an error "
        f"(default {d.task_timeout_s:g})",
    )
    run.add_argument(
        "--quick",
        action="store_true",
        help="smoke preset for CI (levels 1,4; 1 repeat; 0.5 s runs): checks the command "
        "works, its figures mean little",
    )
    other = run.add_mutually_exclusive_group()
    other.add_argument(
        "--sequential",
        type=int,
        metavar="N",
        help="instead of the bench: the sequential check, N calls each way one after the "
        "other, alternating half-close and the finish message (half-close p50 must be "
        f"within {sequential.ALLOWED_MS:g} ms of finish's); exit 1 if not",
    )
    other.add_argument(
        "--fleet",
        type=int,
        metavar="N",
        help="instead of the bench: N sidecar processes against one emulator account, with "
        "and without the fleet quota (needs redis-server)",
    )
    fleet_group = parser.add_argument_group("the fleet comparison (--fleet)")
    plan = fleet.FleetPlan()
    fleet_group.add_argument(
        "--fleet-quota",
        type=int,
        default=plan.quota,
        help=f"the account's concurrent tasks (default {plan.quota})",
    )
    fleet_group.add_argument(
        "--fleet-streams",
        type=int,
        default=plan.streams,
        help=f"closed-loop streams over all sidecars (default {plan.streams})",
    )
    fleet_group.add_argument(
        "--fleet-acquire-timeout",
        type=float,
        default=plan.acquire_timeout_s,
        help="each sidecar's --acquire-timeout: how long a call waits for a slot "
        f"(default {plan.acquire_timeout_s:g})",
    )
    emu = parser.add_argument_group("the emulator (started as its own process)")
    emu.add_argument(
        "--handshake-ms", type=float, default=100.0, help="WebSocket handshake delay (default 100)"
    )
    emu.add_argument(
        "--first-packet-ms", type=float, default=150.0, help="first audio delay (default 150)"
    )
    emu.add_argument(
        "--realtime-factor",
        type=float,
        default=0.25,
        help="audio pacing: 1 = real time, 0.25 = 4x faster (default 0.25)",
    )
    emu.add_argument("--chunk-ms", type=int, default=100, help="audio per frame (default 100)")
    emu.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other emulator knob (repeatable), as `emulate --knob`",
    )
    task = parser.add_argument_group("the task")
    task.add_argument("--text", default=DEFAULT_TEXT, help="text of every task (40 characters)")
    task.add_argument(
        "--fragments", type=int, default=2, help="fragments the text is streamed in (default 2)"
    )
    task.add_argument("--sample-rate", type=int, default=22050, help="pcm sample rate (22050)")
    side = parser.add_argument_group("the sidecar (started as its own process per level)")
    side.add_argument(
        "--loadgen",
        choices=loadgen.LOADGENS,
        default=d.loadgen,
        help="what drives the sidecar modes over gRPC, in a process of its own: go (default) "
        "builds clients/go/cmd/loadgen with the `go` on PATH once per bench run (one HTTP/2 "
        "connection, a goroutine per stream, like the sidecar's Go callers); python runs the "
        "grpc.aio worker (python -m cosyvoice_sidecar_bench.worker), which needs no Go but "
        "takes about 1.5x the Go one's CPU per task (2.3 vs 1.5 ms at 100 streams on 2 "
        "cores) from the cores the sidecar and the emulator run on",
    )
    side.add_argument(
        "--acquire-timeout",
        dest="acquire_timeout_s",
        type=float,
        default=d.acquire_timeout_s,
        help=f"the sidecar's --acquire-timeout (default {d.acquire_timeout_s:g})",
    )
    side.add_argument(
        "--sidecar-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `serve` (repeatable; write --sidecar-arg=--flag=value), "
        "e.g. a tracing switch, to compare runs with it on and off",
    )
    side.add_argument(
        "--sidecar-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for every sidecar process (repeatable)",
    )
    side.add_argument(
        "--b-sidecar-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `serve` argument of the sidecar-b mode only (repeatable): A/B a flag "
        "(e.g. tracing on vs off) interleaved in one run",
    )
    side.add_argument(
        "--b-sidecar-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable of the sidecar-b mode only (repeatable)",
    )
    side.add_argument(
        "--telemetry",
        choices=TELEMETRY,
        default=d.telemetry,
        help="otlp (default): every sidecar exports traces and metrics over OTLP/gRPC, as a "
        "production sidecar does, to a stand-in collector started as its own process "
        "(cosyvoice_sidecar_bench.otlp_sink), whose counts reach the report; off: none. "
        "A/B it with --b-sidecar-env=OTEL_SDK_DISABLED=true",
    )
    side.add_argument(
        "--profile-sidecar",
        type=Path,
        metavar="DIR",
        help="attach py-spy (non-blocking, 200 Hz) to the sidecar during each streaming run "
        "and write collapsed stacks to DIR (needs py-spy)",
    )
    side.add_argument(
        "--profile-native",
        action="store_true",
        help="profile with py-spy --native (C and Cython frames too, e.g. grpc's); it pauses "
        "the sidecar at every sample, so the run's figures suffer",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--label", default="", help="free text recorded in the report (e.g. the code under test)"
    )
    out.add_argument("--json", type=Path, metavar="PATH", help="write the full report as JSON")
    out.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="write a PNG of TTFB percentiles vs concurrency (needs matplotlib)",
    )
    out.add_argument(
        "--logs",
        type=Path,
        metavar="DIR",
        help="keep every process's log in DIR (default: a temporary directory, kept only "
        "when a run failed)",
    )


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Build the settings: defaults, then the ``--quick`` preset, then explicit flags."""
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.quick:
        values["preset"] = "quick"
    for name in ("levels", "modes", "repeats", "duration_s", "ramp_s", "task_timeout_s"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return BenchSettings(
        handshake_delay_s=args.handshake_ms / 1000,
        first_packet_delay_s=args.first_packet_ms / 1000,
        realtime_factor=args.realtime_factor,
        chunk_ms=args.chunk_ms,
        knobs=tuple(args.knob),
        text=args.text,
        fragments=args.fragments,
        sample_rate=args.sample_rate,
        acquire_timeout_s=args.acquire_timeout_s,
        sidecar_args=tuple(args.sidecar_arg),
        sidecar_env=tuple(args.sidecar_env),
        b_sidecar_args=tuple(args.b_sidecar_arg),
        b_sidecar_env=tuple(args.b_sidecar_env),
        profile_dir=args.profile_sidecar,
        profile_native=args.profile_native,
        telemetry=args.telemetry,
        log_dir=args.logs,
        label=args.label,
        loadgen=args.loadgen,
        **values,
    )


class _Progress:
    """A one-line progress indicator on stderr (a line per step when not a terminal)."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._started = time.monotonic()

    def __call__(self, text: str) -> None:
        elapsed = time.monotonic() - self._started
        line = f"bench {elapsed:5.0f}s {text}"
        if self._tty:
            sys.stderr.write("\r\x1b[2K" + line[:160])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _fail(text: str) -> int:
    sys.stderr.write(f"cosyvoice-sidecar bench: {text}\n")
    return 2


async def run(args: argparse.Namespace) -> int:
    """Run the bench as the flags say; return the exit code."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        return _fail(str(exc))
    if args.sequential is not None or args.fleet is not None:
        return await _run_other(args, settings)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return _fail(
            "--plot needs matplotlib, an optional dependency: pip install 'matplotlib==3.11.2'"
        )
    if "sidecar-uvloop" in settings.modes and importlib.util.find_spec("uvloop") is None:
        return _fail("mode sidecar-uvloop needs uvloop: pip install 'uvloop==0.23.0'")
    if "sidecar-fleet" in settings.modes and RedisServer.missing():
        return _fail(f"mode sidecar-fleet: {RedisServer.missing()}")
    if LOADGEN_MODES.intersection(settings.modes):
        problem = loadgen.unavailable(settings.loadgen)
        if problem:
            return _fail(problem)
    progress = _Progress()
    try:
        try:
            result = await run_bench(settings, progress)
        finally:
            progress.close()
    except (loadgen.LoadgenError, RedisUnavailable) as exc:  # a build, a Redis that failed
        sys.stderr.write(f"cosyvoice-sidecar bench: {exc}\n")
        return 1
    sys.stdout.write(report.markdown(result))
    sys.stdout.flush()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_clean(result), indent=1, allow_nan=False) + "\n")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        try:
            report.plot(result, args.plot)
        except report.PlotUnavailable as exc:
            return _fail(str(exc))
    failed = [row for row in result["rows"] if row["failures"]]
    if failed:
        sys.stderr.write(
            f"cosyvoice-sidecar bench: {len(failed)} rows had failed runs; logs in "
            f"{result['logs']}\n"
        )
        return 1
    return 0


async def _run_other(args: argparse.Namespace, settings: BenchSettings) -> int:
    """The sequential check or the fleet comparison instead of the bench."""
    problem = loadgen.unavailable(settings.loadgen)
    if problem:
        return _fail(problem)
    plan = None
    if args.fleet is not None:
        try:
            plan = fleet.FleetPlan(
                sidecars=args.fleet,
                quota=args.fleet_quota,
                streams=args.fleet_streams,
                acquire_timeout_s=args.fleet_acquire_timeout,
            )
        except ValueError as exc:
            return _fail(str(exc))
        missing = RedisServer.missing()
        if missing:
            return _fail(missing)
    elif args.sequential < 1:
        return _fail("--sequential needs N >= 1")
    progress = _Progress()
    try:
        try:
            if plan is not None:
                result = await fleet.run_fleet(settings, plan, progress)
                text = fleet.markdown(result)
                ok = not any(c["failures"] for c in result["cases"].values())
            else:
                result = await sequential.run_sequential(settings, args.sequential, progress)
                text = sequential.markdown(result)
                ok = bool(result["met"])
        finally:
            progress.close()
    except (loadgen.LoadgenError, RedisUnavailable, ChildError) as exc:
        sys.stderr.write(f"cosyvoice-sidecar bench: {exc}\n")
        return 1
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_clean(result), indent=1, allow_nan=False) + "\n")
    return 0 if ok else 1


def _clean(value: Any) -> Any:
    """Replace NaN (a percentile of no samples) with null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` and run the benchmark (or, after ``soak``, the soak); return the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["soak"]:
        from cosyvoice_sidecar_bench import soak

        return soak.main(words[1:], prog=f"{prog} soak" if prog else None)
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the emulator, the sidecar and the other modes as separate processes "
        "and measure time to first audio under concurrency (Markdown on stdout; --json, --plot); "
        "or, with --sequential or --fleet, one of the two other checks.",
    )
    add_arguments(parser)
    args = parser.parse_args(words)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130

"""The fleet comparison: several sidecars on one account, with and without the fleet quota.

``cosyvoice-sidecar bench --fleet N`` starts one ``redis-server`` and, for
each case and repeat (interleaved, the order turning from one repeat to the
next), a fresh emulator whose account runs at most ``quota`` tasks at once
(``max_concurrent_tasks``, beyond which it answers ``Throttling.RateQuota``
as DashScope does), N sidecar processes each sized as the docs warn against
and as pods are sized in practice (``--pool-max-size`` = the account's
quota), and one load generator per sidecar, ``streams / N`` closed-loop
streams each. The cases:

* ``off``: each sidecar on its own: together they start up to N times the
  account's quota, and DashScope throttles the rest;
* ``on``: the same sidecars with ``--fleet-redis-url`` and ``--fleet-quota``:
  at most ``quota`` tasks run fleet-wide, and the rest wait their turn (up to
  ``--acquire-timeout``, then RESOURCE_EXHAUSTED with a RetryInfo).

Callers behave well in both: a call refused with a RetryInfo is retried after
the hint (``honor_retry``), as the sidecar's clients do. Reported per case:
calls completed (and per second), refusals by kind (the sidecar's own
RESOURCE_EXHAUSTED, the upstream's throttling as the callers saw it, the
tasks the emulator refused), other errors, the emulator's peak of concurrent
tasks, and the completed calls' time to first audio.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cosyvoice_sidecar_bench import machine
from cosyvoice_sidecar_bench.loadgen import Loadgen, prepare
from cosyvoice_sidecar_bench.procs import Child, ChildError, EmulatorClient
from cosyvoice_sidecar_bench.redis_server import RedisServer
from cosyvoice_sidecar_bench.runner import emulator_args
from cosyvoice_sidecar_bench.settings import API_KEY, BenchSettings, Progress
from cosyvoice_sidecar_bench.stats import summary
from cosyvoice_sidecar_bench.worker import WorkerSpec
from cosyvoice_sidecar_bench.workload import Workload

__all__ = ["CASES", "SCHEMA", "FleetPlan", "markdown", "run_fleet"]

SCHEMA: Final = "cosyvoice-sidecar-bench-fleet/1"
CASES: Final = ("off", "on")


@dataclass(frozen=True)
class FleetPlan:
    """The fleet's shape: how many sidecars, the account's quota, the callers."""

    sidecars: int = 3
    quota: int = 20
    streams: int = 60  # spread evenly over the sidecars
    acquire_timeout_s: float = 5.0  # how long a call may wait for a slot

    def __post_init__(self) -> None:
        if self.sidecars < 1 or self.quota < 1 or self.streams < self.sidecars:
            raise ValueError("need sidecars >= 1, quota >= 1 and at least a stream per sidecar")
        if self.acquire_timeout_s <= 0:
            raise ValueError("the acquire timeout must be > 0")

    def streams_of(self, index: int) -> int:
        """Streams of sidecar ``index``: an even share, the remainder to the first ones."""
        share, rest = divmod(self.streams, self.sidecars)
        return share + (1 if index < rest else 0)


@dataclass
class _Context:
    settings: BenchSettings
    plan: FleetPlan
    loadgen: Loadgen
    redis_url: str
    log_dir: Path
    progress: Progress


async def run_fleet(settings: BenchSettings, plan: FleetPlan, progress: Progress) -> dict[str, Any]:
    """Run both cases ``settings.repeats`` times, interleaved; return the JSON-ready report."""
    started = time.time()
    log_dir = settings.run_log_dir("cosyvoice-bench-fleet-")
    described = machine.describe()
    loadgen = await prepare(settings.loadgen, log_dir, progress)
    runs: list[dict[str, Any]] = []
    failed = True
    async with RedisServer(log_path=log_dir / "redis-server.log") as redis:
        ctx = _Context(settings, plan, loadgen, redis.url, log_dir, progress)
        for repeat in range(settings.repeats):
            for case in CASES if repeat % 2 == 0 else tuple(reversed(CASES)):
                runs.append(await _run(ctx, case, repeat))
        failed = any(r["failure"] for r in runs)
    if settings.log_dir is None and not failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    return {
        "schema": SCHEMA,
        "started_at": machine.timestamp(started),
        "elapsed_s": round(time.time() - started, 1),
        "machine": {**described, "loadavg_end": machine.loadavg()},
        "settings": {**settings.to_dict(), "fleet": plan.__dict__},
        "loadgen": loadgen.describe(),
        "workload": runs[0]["workload"] if runs else None,
        "cases": {case: _aggregate([r for r in runs if r["case"] == case]) for case in CASES},
        "runs": [{k: v for k, v in r.items() if k not in ("ttfb_ms", "workload")} for r in runs],
        "logs": str(log_dir) if (settings.log_dir or failed) else None,
    }


async def _run(ctx: _Context, case: str, repeat: int) -> dict[str, Any]:
    """One case once: a fresh emulator (its peak is this run's), N sidecars, N load generators."""
    s, plan = ctx.settings, ctx.plan
    tag = f"{case}-r{repeat}"
    run: dict[str, Any] = {"case": case, "repeat": repeat, "failure": None}
    ctx.progress(f"repeat {repeat + 1}, fleet quota {case}: starting {plan.sidecars} sidecars")
    async with AsyncExitStack() as stack:
        emulator = Child(
            f"emulator-{tag}",
            emulator_args(s, f"max_concurrent_tasks={plan.quota}"),
            log_dir=ctx.log_dir,
        )
        stack.push_async_callback(emulator.stop)
        try:
            await emulator.start()
            url = (await emulator.expect(r"^emulator on (ws://\S+)$", timeout=30)).group(1)
            client = EmulatorClient(url)
            knobs = await client.knobs()
            workload = Workload.build(s.text, s.fragments, s.sample_rate, knobs)
            run["workload"] = workload.to_dict()
            ramp = s.ramp_s if s.ramp_s is not None else workload.task_seconds(s.realtime_factor)
            workers = []
            for index in range(plan.sidecars):
                target = await _sidecar(ctx, stack, url, case, f"{tag}-{index}", repeat)
                spec = WorkerSpec(
                    mode="grpc-stream",
                    level=plan.streams_of(index),
                    target=target,
                    workload=workload,
                    ramp_s=ramp,
                    duration_s=s.duration_s,
                    task_timeout_s=s.task_timeout_s,
                    api_key=API_KEY,
                    honor_retry=True,
                )
                worker = Child(
                    f"loadgen-{tag}-{index}",
                    [*ctx.loadgen.args, spec.to_json()],
                    log_dir=ctx.log_dir,
                    stdin=True,
                    program=ctx.loadgen.program,
                )
                stack.push_async_callback(worker.stop, 5)
                await worker.start()
                await worker.json_line("ready", timeout=30)
                workers.append(worker)
            ctx.progress(f"repeat {repeat + 1}, fleet quota {case}: running {plan.streams} streams")
            before = await client.stats()
            for worker in workers:
                await worker.send("go\n")
            timeout = ramp + s.duration_s + s.task_timeout_s + 30
            results = await asyncio.gather(*(w.json_line("result", timeout) for w in workers))
            after = await client.stats()
        except (ChildError, OSError) as exc:
            run["failure"] = str(exc)
            return run
    run.update(_fold(list(results), before, after, workload.intrinsic_ms))
    return run


async def _sidecar(
    ctx: _Context, stack: AsyncExitStack, url: str, case: str, name: str, repeat: int
) -> str:
    """Start one sidecar of the fleet; return its address."""
    plan = ctx.plan
    serve = ["serve", "--listen", "127.0.0.1:0", "--upstream-url", url]
    serve += ["--pool-max-size", str(plan.quota), "--pool-min-idle", str(plan.quota)]
    serve += ["--acquire-timeout", str(plan.acquire_timeout_s), "--log-level", "warning"]
    if case == "on":
        serve += ["--fleet-redis-url", ctx.redis_url, "--fleet-quota", str(plan.quota)]
        serve += ["--fleet-key", f"bench-fleet-{repeat}"]  # a fresh queue for every run
    serve += ctx.settings.sidecar_args
    env = {"DASHSCOPE_API_KEY": API_KEY}
    sidecar = Child(f"sidecar-{name}", ["-m", "sidecar", *serve], log_dir=ctx.log_dir, env=env)
    stack.push_async_callback(sidecar.stop, 20)
    await sidecar.start()
    return (await sidecar.expect(r"^serving on (\S+)$", timeout=60)).group(1)


def _fold(
    results: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any], intrinsic: float
) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for result in results:
        for kind, count in result["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    failed_upstream = after["outcomes"].get("failed", 0) - before["outcomes"].get("failed", 0)
    return {
        "tasks": sum(r["tasks"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "audio_mismatches": sum(r["audio_mismatches"] for r in results),
        "error_kinds": dict(sorted(kinds.items())),
        "error_samples": [e for r in results for e in r["error_samples"]][:5],
        "elapsed_s": max(r["elapsed_s"] for r in results),
        "ttfb_ms": [v for r in results for v in r["ttfb_ms"]],
        "intrinsic_ms": intrinsic,
        "upstream_refused": failed_upstream,  # task-failed at the emulator: throttled here
        "upstream_peak_tasks": after["peak_concurrent_tasks"],
    }


def _refusals(kinds: dict[str, int], *, upstream: bool) -> int:
    """RESOURCE_EXHAUSTED calls: DashScope's throttling, or the sidecar's own refusals."""
    return sum(
        n
        for kind, n in kinds.items()
        if kind.startswith("RESOURCE_EXHAUSTED")
        and kind.startswith("RESOURCE_EXHAUSTED Throttling") == upstream
    )


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if not r["failure"]]
    kinds: dict[str, int] = {}
    for run in ok:
        for kind, count in run["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    tasks = sum(r["tasks"] for r in ok)
    errors = sum(r["errors"] for r in ok)
    sidecar_refused = _refusals(kinds, upstream=False)
    throttled = _refusals(kinds, upstream=True)
    elapsed = sum(r["elapsed_s"] for r in ok)
    return {
        "runs": len(runs),
        "failures": [r["failure"] for r in runs if r["failure"]],
        "calls": tasks,
        "completed": tasks - errors,
        "completed_per_s": (tasks - errors) / elapsed if elapsed else None,
        "resource_exhausted_sidecar": sidecar_refused,
        "resource_exhausted_throttled": throttled,
        "other_errors": errors - sidecar_refused - throttled,
        "audio_mismatches": sum(r["audio_mismatches"] for r in ok),
        "error_kinds": dict(sorted(kinds.items())),
        "upstream_refused": sum(r["upstream_refused"] for r in ok),
        "upstream_peak_tasks": max((r["upstream_peak_tasks"] for r in ok), default=None),
        "ttfb_ms": summary(v for r in ok for v in r["ttfb_ms"]),
    }


def markdown(report: dict[str, Any]) -> str:
    """The fleet comparison as Markdown: the setup, one row per case."""
    m, f = report["machine"], report["settings"]["fleet"]
    s = report["settings"]
    lines = [
        f"Fleet comparison of {report['started_at']} ({report['elapsed_s']:.0f} s): "
        f"{m['cores']} cores, {m['python']}; load average {m['loadavg_start']} at start, "
        f"{m['loadavg_end']} at end; commit {m['commit'] or 'unknown'}.",
        "",
        f"{f['sidecars']} sidecar processes, each with --pool-max-size {f['quota']} (the "
        f"account's quota) and --acquire-timeout {f['acquire_timeout_s']:g}, against one "
        f"emulator whose account runs at most {f['quota']} tasks at once (more are refused "
        f"with Throttling.RateQuota); {f['streams']} closed-loop streams spread over the "
        f"sidecars, one load generator each; a call refused with a RetryInfo is retried "
        f"after it. {s['repeats']} repeat(s) of {s['duration_s']:g} s per case, "
        f"interleaved; real-time factor {s['realtime_factor']:g}. Fleet quota on: "
        f"--fleet-redis-url (one local redis-server) and --fleet-quota {f['quota']}.",
        "",
        "| fleet quota | calls | completed | completed/s | RESOURCE_EXHAUSTED from the "
        "sidecar | throttled by DashScope | other errors | tasks the account refused "
        "| peak tasks at the account | TTFB p50 | p90 | p99 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case, c in report["cases"].items():
        t = c["ttfb_ms"]
        rate = "-" if c["completed_per_s"] is None else f"{c['completed_per_s']:.1f}"
        lines.append(
            f"| {case} | {c['calls']:,} | {c['completed']:,} | {rate} "
            f"| {c['resource_exhausted_sidecar']:,} | {c['resource_exhausted_throttled']:,} "
            f"| {c['other_errors']:,} | {c['upstream_refused']:,} "
            f"| {c['upstream_peak_tasks']} | {t['p50']:.1f} | {t['p90']:.1f} | {t['p99']:.1f} |"
        )
    failures = [(case, x) for case, c in report["cases"].items() for x in c["failures"]]
    if failures:
        lines += ["", "Runs that failed:", *(f"- {case}: {x}" for case, x in failures)]
    return "\n".join(lines) + "\n"

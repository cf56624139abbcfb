"""The sequential check: does ending input by half-close cost more than the finish message?

``cosyvoice-sidecar bench --sequential N`` runs ``2 N`` calls one after the
other on one sidecar (pool of one warm socket) and one load generator
process, alternating the two ways a caller ends its input: a half-close
alone (what every gRPC client does) and the explicit ``finish`` message, then
the half-close. Alternating, rather than N of one then N of the other, lets
any drift of a shared machine fall on both alike.

The text has no sentence-ending punctuation, so DashScope (and the emulator)
starts synthesizing only when finish-task arrives: the time to first audio
then contains the sidecar's path from the end of the caller's input to
finish-task upstream, the one thing that differs between the two ways. With
a complete sentence, synthesis would start with the text and the check could
not fail.

Verdict: the half-close's median first-audio overhead must be at most the
finish message's plus :data:`ALLOWED_MS`.
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any, Final

from cosyvoice_sidecar_bench import machine
from cosyvoice_sidecar_bench.loadgen import prepare
from cosyvoice_sidecar_bench.procs import Child, EmulatorClient
from cosyvoice_sidecar_bench.runner import emulator_args
from cosyvoice_sidecar_bench.settings import API_KEY, BenchSettings, Progress
from cosyvoice_sidecar_bench.stats import summary
from cosyvoice_sidecar_bench.worker import WorkerSpec
from cosyvoice_sidecar_bench.workload import Workload

__all__ = ["ALLOWED_MS", "SCHEMA", "markdown", "open_text", "run_sequential"]

SCHEMA: Final = "cosyvoice-sidecar-bench-sequential/1"
ALLOWED_MS: Final = 1.0
_ENDS: Final = ("half-close", "finish")


def open_text(text: str) -> str:
    """Return ``text`` without its trailing sentence ends: a sentence that waits for finish."""
    # The sentence ends of docs/dashscope-protocol.md §4.2, full-width ones included.
    return text.rstrip().rstrip("\u3002\uff01\uff1f\uff1b.!?;\n").rstrip()


async def run_sequential(settings: BenchSettings, calls: int, progress: Progress) -> dict[str, Any]:
    """Run ``calls`` calls each way, alternating; return the JSON-ready report."""
    started = time.time()
    log_dir = settings.run_log_dir("cosyvoice-bench-seq-")
    described = machine.describe()
    loadgen = await prepare(settings.loadgen, log_dir, progress)
    emulator = Child("emulator", emulator_args(settings), log_dir=log_dir)
    sidecar: Child | None = None
    failed = True
    try:
        progress("starting the emulator and a sidecar with one warm socket")
        await emulator.start()
        url = (await emulator.expect(r"^emulator on (ws://\S+)$", timeout=30)).group(1)
        knobs = await EmulatorClient(url).knobs()
        workload = Workload.build(
            open_text(settings.text), settings.fragments, settings.sample_rate, knobs
        )
        serve = ["serve", "--listen", "127.0.0.1:0", "--upstream-url", url]
        serve += ["--pool-min-idle", "1", "--pool-max-size", "1", *settings.sidecar_args]
        env = {"DASHSCOPE_API_KEY": API_KEY, **_pairs(settings.sidecar_env)}
        sidecar = Child("sidecar", ["-m", "sidecar", *serve], log_dir=log_dir, env=env)
        await sidecar.start()
        target = (await sidecar.expect(r"^serving on (\S+)$", timeout=60)).group(1)
        task_s = workload.task_seconds(settings.realtime_factor)
        spec = WorkerSpec(
            mode="grpc-stream",
            level=1,
            target=target,
            workload=workload,
            ramp_s=0.0,
            # The calls, not the window, end the run; the window only bounds it.
            duration_s=2 * calls * (task_s + settings.task_timeout_s),
            task_timeout_s=settings.task_timeout_s,
            end="alternate",
            max_tasks=2 * calls,
        )
        worker = Child(
            "loadgen",
            [*loadgen.args, spec.to_json()],
            log_dir=log_dir,
            stdin=True,
            program=loadgen.program,
        )
        await worker.start()
        await worker.json_line("ready", timeout=30)
        progress(f"{2 * calls} sequential calls, alternating half-close and finish")
        await worker.send("go\n")
        data = await worker.json_line("result", timeout=spec.duration_s + 30)
        await worker.wait(30)
        failed = bool(data["errors"] or data["audio_mismatches"])
    finally:
        if sidecar is not None:
            await sidecar.stop(20)
        await emulator.stop()
        if settings.log_dir is None and not failed:
            shutil.rmtree(log_dir, ignore_errors=True)
    intrinsic = workload.intrinsic_ms
    ends: dict[str, dict[str, Any]] = {}
    p50: dict[str, float] = {}
    for end in _ENDS:
        overheads = [v - intrinsic for v in data["breakdown"].get(f"ttfb_{end}_ms", [])]
        ends[end] = {"calls": len(overheads), "overhead_ms": summary(overheads)}
        p50[end] = ends[end]["overhead_ms"]["p50"]
    half, finish = p50["half-close"], p50["finish"]
    return {
        "schema": SCHEMA,
        "started_at": machine.timestamp(started),
        "elapsed_s": round(time.time() - started, 1),
        "machine": {**described, "loadavg_end": machine.loadavg()},
        "loadgen": loadgen.describe(),
        "calls_each_way": calls,
        "workload": workload.to_dict(),
        "emulator_knobs": knobs,
        "tasks": data["tasks"],
        "errors": data["errors"],
        "audio_mismatches": data["audio_mismatches"],
        "error_samples": data["error_samples"],
        "ends": ends,
        "difference_p50_ms": half - finish,
        "allowed_ms": ALLOWED_MS,
        "met": (not failed) and not math.isnan(half - finish) and half <= finish + ALLOWED_MS,
        "logs": str(log_dir) if (settings.log_dir or failed) else None,
    }


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    return {name: value for name, _, value in (item.partition("=") for item in items)}


def markdown(report: dict[str, Any]) -> str:
    """The sequential check as Markdown: the setup, one row per way, the verdict."""
    m, w, k = report["machine"], report["workload"], report["emulator_knobs"]
    lines = [
        f"Sequential check of {report['started_at']} ({report['elapsed_s']:.0f} s): "
        f"{m['cores']} cores, {m['python']}; load average {m['loadavg_start']} at start, "
        f"{m['loadavg_end']} at end; commit {m['commit'] or 'unknown'}.",
        "",
        f"{2 * report['calls_each_way']} calls one after the other on one sidecar with one "
        f"warm socket, alternating how the caller ends its input (load generator: "
        f"{report['loadgen']['name']} {report['loadgen']['version']}). Text "
        f"{w['text']!r} in {len(w['fragments'])} fragments, with no sentence end, so "
        f"synthesis starts at finish-task; the emulator's first packet comes "
        f"{k['first_packet_delay_s'] * 1000:g} ms after it. Overhead = time to first audio "
        f"- {w['intrinsic_ms']:g} ms, in ms.",
        "",
        "| input ended by | calls | overhead p50 | p90 | p99 | max |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for end, row in report["ends"].items():
        o = row["overhead_ms"]
        lines.append(
            f"| {end} | {row['calls']} | {o['p50']:.2f} | {o['p90']:.2f} | {o['p99']:.2f} "
            f"| {o['max']:.2f} |"
        )
    errors = report["errors"] + report["audio_mismatches"]
    verdict = "met" if report["met"] else "NOT met"
    lines += [
        "",
        f"Half-close p50 - finish p50 = {report['difference_p50_ms']:+.2f} ms (allowed: "
        f"+{report['allowed_ms']:g} ms): {verdict}; {errors} errors in {report['tasks']} calls.",
    ]
    return "\n".join(lines) + "\n"

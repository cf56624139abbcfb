"""Turning a bench report into Markdown, a verdict per target, and a PNG plot.

The report is the JSON-ready dict that :func:`cosyvoice_sidecar_bench.runner.run_bench`
returns; everything here reads only that dict, so a saved ``--json`` file
can be rendered again later.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Final

from cosyvoice_sidecar_bench.budget import budget_tables, floors_table
from cosyvoice_sidecar_bench.settings import LOADGEN_MODES
from cosyvoice_sidecar_bench.targets import LATENCY_MAX_LEVEL, LATENCY_MODES, targets

__all__ = ["PlotUnavailable", "log_ticks", "markdown", "plot"]

_PLOT_STYLES: Final = {"p50": "-", "p90": "--", "p99": ":"}
_COLORS: Final = {
    "cold": "tab:gray",
    "sdk-pool": "tab:red",
    "floor": "tab:green",
    "grpc-floor": "tab:olive",
    "sidecar": "tab:blue",
    "sidecar-finish": "tab:brown",
    "sidecar-unary": "tab:purple",
    "sidecar-uvloop": "tab:cyan",
    "sidecar-b": "tab:orange",
    "sidecar-fleet": "tab:pink",
}


class PlotUnavailable(RuntimeError):
    """Raised when ``--plot`` is asked for but matplotlib is not installed."""


def _ms(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def loadgen_sentence(report: dict[str, Any]) -> str:
    """Say what drove the sidecar modes ("" if none ran).

    Reports from before ``--loadgen`` existed have no ``loadgen`` entry; their
    load generator was the Python worker.
    """
    if not any(r["mode"] in LOADGEN_MODES for r in report["rows"]):
        return ""
    loadgen = report.get("loadgen") or {"name": "python", "version": None}
    if loadgen["name"] == "go":
        return (
            f"The sidecar modes were driven by the Go load generator (clients/go/cmd/loadgen, "
            f"{loadgen['version']}) in its own process: one HTTP/2 connection, a goroutine "
            "per stream."
        )
    version = f", {loadgen['version']}" if loadgen.get("version") else ""
    return (
        "The sidecar modes were driven by the Python load generator (python -m "
        f"cosyvoice_sidecar_bench.worker, grpc.aio{version}) in its own process: one channel, a "
        "coroutine per stream."
    )


def markdown(report: dict[str, Any]) -> str:
    """Return the report as Markdown: setup, results table, warm-up, targets."""
    m = report["machine"]
    s = report["settings"]
    k = report["emulator_knobs"]
    w = report["workload"]
    packages = ", ".join(f"{n} {v}" for n, v in m["packages"].items() if v)
    lines = [
        f"Bench of {report['started_at']} ({report['elapsed_s']:.0f} s, preset {s['preset']}): "
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['python']}, {m['os']}; "
        f"load average {m['loadavg_start']} at start, {m['loadavg_end']} at end; "
        f"commit {m['commit'] or 'unknown'}" + (f" ({s['label']})" if s.get("label") else "") + ".",
        "",
        f"Packages: {packages}.",
        "",
        f"Emulator (its own process): handshake {k['handshake_delay_s'] * 1000:g} ms, "
        f"first packet {k['first_packet_delay_s'] * 1000:g} ms, "
        f"real-time factor {k['realtime_factor']:g}, {k['chunk_ms']} ms chunks. "
        f"Each task: {len(w['text'])} characters in {len(w['fragments'])} fragments, "
        f"pcm {w['sample_rate']} Hz, {w['expected_bytes']:,} audio bytes "
        f"({w['audio_ms']:.0f} ms of audio). Overhead = TTFB - {w['intrinsic_ms']:g} ms "
        "(what the emulator itself takes to the first audio byte).",
        "",
        f"Each mode and level ran {s['repeats']} time(s) for {s['duration_s']:g} s after a "
        f"{s['ramp_s']:.2f} s ramp, interleaved; closed loop (each stream starts its next task "
        "when the previous one ends). Times in ms.",
        "",
    ]
    driver = loadgen_sentence(report)
    if driver:
        lines[-2] += " " + driver
    if s.get("b_sidecar_args") or s.get("b_sidecar_env"):
        b = " ".join([*s.get("b_sidecar_env", ()), "serve ...", *s.get("b_sidecar_args", ())])
        lines += [f"sidecar-b is the sidecar run as: `{b}`.", ""]
    sink = report.get("otlp_sink")
    if sink is not None:
        lines += [
            "Telemetry on: every sidecar exported traces and metrics over OTLP/gRPC, as in "
            "production, to a stand-in collector process, which received "
            f"{sink['spans']:,} spans and {sink['metric_points']:,} metric points in "
            f"{sink['exports']:,} exports.",
            "",
        ]
    elif s.get("telemetry") == "off":
        lines += ["Telemetry off: the sidecars exported nothing.", ""]
    lines += [
        "| mode | streams | tasks | errors | TTFB p50 | p90 | p99 | max | overhead p50 "
        "| overhead p99 | gap p99 | tasks/s | CPU ms/task | peak RSS MiB | upstream conns "
        "| other load | audio |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in report["rows"]:
        t = r["ttfb_ms"]
        o = r["overhead_ms"]
        errors = r["errors"] + r["audio_mismatches"]
        audio = "ok" if r["audio_ok"] else ("FAILED" if r["failures"] else "mismatch")
        lines.append(
            f"| {r['mode']} | {r['level']} | {r['tasks']:,} | {errors} | {_ms(t['p50'])} "
            f"| {_ms(t['p90'])} | {_ms(t['p99'])} | {_ms(t['max'])} | {_ms(o['p50'])} "
            f"| {_ms(o['p99'])} | {_ms(r['gap_p99_ms'])} | {_ms(r['tasks_per_s'])} "
            f"| {_ms(r['cpu_ms_per_task'], 2)} | {_ms(r['peak_rss_mb'], 0)} "
            f"| {r['connections_opened']:,} | {_ms(r['other_load_cores'], 2)} | {audio} |"
        )
    lines += [
        "",
        "CPU ms/task and peak RSS are the serving process's: the sidecar process for the "
        "sidecar modes (the load generator's own CPU per task is in the table below, and in "
        "the JSON as client_cpu_ms_per_task), the client process for cold, floor and sdk-pool. "
        "Upstream conns: WebSockets the emulator accepted during "
        "the measured window. Other load: CPU (in cores) that processes other than the bench's "
        "own used meanwhile (the machine is shared). Gap: time between two audio chunks of one "
        "task "
        f"(the emulator paces them {k['chunk_ms'] * k['realtime_factor']:g} ms apart; the "
        "sidecar merges later frames for up to --audio-batch-ms while the caller is well "
        "ahead of real time, so its gaps are longer by design).",
    ]
    kinds = [(r["mode"], r["level"], r.get("error_kinds") or {}) for r in report["rows"]]
    if any(k for _, _, k in kinds):
        lines += ["", "Errors by kind (gRPC status and ErrorInfo reason, or exception):"]
        lines += [
            f"- {mode} at {level}: " + ", ".join(f"{kind} x{count:,}" for kind, count in k.items())
            for mode, level, k in kinds
            if k
        ]
    above = latency_table(report)
    if above:
        lines += ["", *above]
    split = breakdown_table(report)
    if split:
        lines += ["", *split]
    floors = floors_table(report)
    if floors:
        lines += ["", *floors]
    budget = budget_tables(report)
    if budget:
        lines += ["", *budget]
    warm = warmup_table(report)
    if warm:
        lines += ["", *warm]
    verdicts = targets(report)
    if verdicts:
        lines += [
            "",
            "| goal | measured | verdict | repeats meeting it |",
            "|---|---|---|--:|",
        ]
        lines += [
            f"| {v['goal']} | {v['measured']} | {v['verdict']} | {v.get('repeats', '-')} |"
            for v in verdicts
        ]
    failures = [(r["mode"], r["level"], f) for r in report["rows"] for f in r["failures"]]
    if failures:
        lines += ["", "Runs that failed:"]
        lines += [f"- {mode} at {level}: {text}" for mode, level, text in failures]
    samples = [
        (run["mode"], run["level"], e) for run in report["runs"] for e in run["error_samples"][:2]
    ]
    if samples:
        lines += ["", "First errors:"]
        lines += [f"- {mode} at {level}: {text}" for mode, level, text in samples[:10]]
    return "\n".join(lines) + "\n"


def latency_table(report: dict[str, Any]) -> list[str]:
    """Return each way of calling the sidecar above the upstream floor, per level (Markdown)."""
    rows = {(r["mode"], r["level"]): r for r in report["rows"] if r.get("tasks")}
    modes = [m for m in LATENCY_MODES if any(k[0] == m for k in rows)]
    levels = sorted(n for (m, n) in rows if m == "floor" and any((x, n) in rows for x in modes))
    if not modes or not levels:
        return []
    lines = [
        "First-audio overhead above the upstream floor's, ms, p50 / p99 (the goal, up to "
        f"{LATENCY_MAX_LEVEL} streams: within + 2 / + 5):",
        "",
        "| streams | " + " | ".join(f"{m} ({LATENCY_MODES[m]})" for m in modes) + " |",
        "|--:|" + "--:|" * len(modes),
    ]
    for n in levels:
        floor = rows["floor", n]["overhead_ms"]
        cells = []
        for m in modes:
            row = rows.get((m, n))
            if row is None:
                cells.append("-")
                continue
            o = row["overhead_ms"]
            cells.append(f"{o['p50'] - floor['p50']:+.1f} / {o['p99'] - floor['p99']:+.1f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def breakdown_table(report: dict[str, Any]) -> list[str]:
    """Return where a sidecar call's time goes, as Markdown lines (empty without sidecar rows).

    ``Completed.first_audio_ms`` is the sidecar's own clock, from its session's
    start to the first audio frame from upstream; the rest of the client's TTFB
    is gRPC in both directions and the load generator itself, whose own CPU per
    task is the last column.
    """
    rows = [
        r
        for r in report["rows"]
        if r.get("breakdown_ms", {}).get("server_first_audio_ms") and r["mode"] != "grpc-floor"
    ]
    if not rows:
        return []
    intrinsic = report["workload"]["intrinsic_ms"]
    lines = [
        "Where a sidecar call's first-byte time goes (ms, p50 / p99): Started as seen by the "
        "client; the sidecar's own first_audio_ms minus the emulator's delay (pool, run-task, "
        "its event loop); the client's overhead. Last, the load generator's own CPU per task "
        "(it shares the machine with the sidecar and the emulator).",
        "",
        "| mode | streams | Started at client | sidecar-side overhead | client-side overhead "
        "| load generator CPU ms/task |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        b = r["breakdown_ms"]
        started = b.get("client_started_ms", {})
        server = b["server_first_audio_ms"]
        lines.append(
            f"| {r['mode']} | {r['level']} | {_ms(started.get('p50'))} / {_ms(started.get('p99'))} "
            f"| {_ms(server['p50'] - intrinsic)} / {_ms(server['p99'] - intrinsic)} "
            f"| {_ms(r['overhead_ms']['p50'])} / {_ms(r['overhead_ms']['p99'])} "
            f"| {_ms(r.get('client_cpu_ms_per_task'), 2)} |"
        )
    return lines


def warmup_table(report: dict[str, Any]) -> list[str]:
    """Return the warm-up comparison as Markdown lines (empty if nothing warmed)."""
    modes = [
        m
        for m in ("sidecar", "sidecar-uvloop", "sidecar-b", "floor", "sdk-pool")
        if any(w["mode"] == m for w in report["warmup"])
    ]
    if not modes:
        return []
    labels = {
        "sidecar": "sidecar pool (parallel)",
        "sidecar-uvloop": "sidecar on uvloop",
        "sidecar-b": "sidecar-b",
        "floor": "floor (parallel opens)",
        "sdk-pool": "SDK pool (serial, capped at 100)",
    }
    lines = [
        "Warm-up, seconds until N sockets are open and ready (worst repeat):",
        "",
        "| streams | " + " | ".join(labels[m] for m in modes) + " |",
        "|--:|" + "--:|" * len(modes),
    ]
    for level in report["settings"]["levels"]:
        cells = []
        for mode in modes:
            entry = next(
                (w for w in report["warmup"] if w["mode"] == mode and w["level"] == level), None
            )
            cells.append(
                "-" if entry is None else f"{entry['seconds']:.2f} ({entry['sockets']} sockets)"
            )
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return lines


# Mantissas of tick values on a log axis, coarsest first; finer sets are used
# when the data spans too little of a decade for the coarser ones.
_LOG_MANTISSAS: Final = ((1,), (1, 2, 5), (1, 2, 3, 5, 7), (1, 2, 3, 4, 5, 6, 7, 8, 9))
_MIN_TICKS: Final = 3
_MAX_TICKS: Final = 10


def log_ticks(lo: float, hi: float) -> list[float]:
    """Return 3 to 10 round tick values within ``[lo, hi]`` (> 0) for a log axis.

    Whatever the spread: a range of decades gets powers of ten (or 1-2-5), and a
    range inside one decade, such as 151-157 ms, gets evenly spaced round
    values (152, 154, 156), so a log axis never ends up without a label.
    """
    if lo <= 0 or hi <= 0:
        raise ValueError("a log axis needs positive limits")
    lo, hi = min(lo, hi), max(lo, hi)
    if hi / lo < 1.0001:
        lo, hi = lo * 0.95, hi * 1.05
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in _LOG_MANTISSAS:
        ticks = [
            m * 10.0**e
            for e in range(first, last + 1)
            for m in mantissas
            if lo <= m * 10.0**e <= hi
        ]
        if _MIN_TICKS <= len(ticks) <= _MAX_TICKS:
            return ticks
        if len(ticks) > _MAX_TICKS:  # a coarser set gave too few, this one too many
            return ticks[:: math.ceil(len(ticks) / _MAX_TICKS)]
    # Less than a few units of the decade: round, evenly spaced values.
    step = 10.0 ** math.floor(math.log10(hi - lo))
    for factor in (1, 0.5, 0.2, 0.1, 0.05, 0.02):
        size = step * factor
        ticks = [k * size for k in range(math.ceil(lo / size), math.floor(hi / size) + 1)]
        if len(ticks) >= _MIN_TICKS:
            return [round(t, 12) for t in ticks[:: math.ceil(len(ticks) / _MAX_TICKS)]]
    return [lo, hi]


def plot(report: dict[str, Any], path: Path) -> None:
    """Write a PNG: TTFB and overhead percentiles against concurrency, per mode, log scales.

    Left: time to the first audio byte; right: the same minus the emulator's
    own first-packet delay (the overhead), where the modes' differences show.
    Every axis is labelled whatever the data's spread (:func:`log_ticks`), and
    the legend sits below the panels, off the data.
    Raises :class:`PlotUnavailable` when matplotlib is missing.
    """
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, an optional dependency: pip install 'matplotlib==3.11.2'"
        ) from None
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    ticker = importlib.import_module("matplotlib.ticker")
    lines = importlib.import_module("matplotlib.lines")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6), dpi=110, layout="constrained")
    modes = list(dict.fromkeys(r["mode"] for r in report["rows"]))
    levels = report["settings"]["levels"]
    for ax, key, floor in ((left, "ttfb_ms", None), (right, "overhead_ms", 0.1)):
        for mode in modes:
            rows = sorted(
                (r for r in report["rows"] if r["mode"] == mode), key=lambda r: r["level"]
            )
            for q, style in _PLOT_STYLES.items():
                points = [
                    (r["level"], max(r[key][q], floor) if floor else r[key][q])
                    for r in rows
                    if r[key][q] is not None and not math.isnan(r[key][q])
                ]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, marker="o", markersize=3, color=_COLORS.get(mode))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(levels)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        bottom, top = ax.get_ylim()
        ax.set_yticks(log_ticks(bottom, top))
        ax.set_ylim(bottom, top)
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("concurrent streams")
        ax.grid(True, which="both", alpha=0.3)
    intrinsic = report["workload"]["intrinsic_ms"]
    left.set_ylabel("time to first audio byte (ms)")
    right.set_ylabel(f"overhead: TTFB - {intrinsic:g} ms emulator delay (ms)")
    if intrinsic > 0:
        left.axhline(intrinsic, color="black", linewidth=0.8, alpha=0.5)
    handles = [lines.Line2D([], [], color=_COLORS.get(m), label=m) for m in modes]
    handles += [
        lines.Line2D([], [], color="black", linestyle=style, label=q)
        for q, style in _PLOT_STYLES.items()
    ]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles))
    m = report["machine"]
    pace = report["settings"].get("realtime_factor")
    fig.suptitle(
        f"cosyvoice-sidecar bench: TTFB vs concurrency ({m['cores']} cores, {m['python']}, "
        f"real-time factor {pace:g}, {report['started_at'][:10]})",
        fontsize=11,
    )
    fig.savefig(path)
    plt.close(fig)

"""Where the machine's CPU went in each run, and what the sidecar's event loop would need.

A bench on a small machine measures the machine as much as the code: the
sidecar, the emulator and the load generator share its cores. These tables
make that visible in every report: per mode and level, the cores each
process used, and how busy the serving process's event-loop thread was (one
asyncio loop can never use more than one core, whatever the machine has).
"""

from __future__ import annotations

import math
from typing import Any

from cosyvoice_sidecar_bench.settings import LOADGEN_MODES

__all__ = ["budget_tables", "floors_table", "loop_ms_per_task"]


def _cores(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    rate = row.get("tasks_per_s")
    if value is None or rate is None or math.isnan(value) or math.isnan(rate):
        return math.nan
    return float(value) * float(rate) / 1000


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def loop_ms_per_task(row: dict[str, Any]) -> float:
    """Return the event-loop thread's CPU ms per task of a row (NaN when not measured)."""
    busy = row.get("loop_busy")
    rate = row.get("tasks_per_s")
    if not busy or not rate or math.isnan(busy) or math.isnan(rate):
        return math.nan
    return float(busy) * 1000 / float(rate)


def budget_tables(report: dict[str, Any]) -> list[str]:
    """Return the CPU budget as Markdown lines (empty when no row has CPU figures)."""
    rows = [r for r in report["rows"] if r.get("tasks")]
    if not rows:
        return []
    cores = report["machine"].get("cores_usable") or report["machine"]["cores"]
    lines = [
        f"Where the CPU went, in cores of the machine's {cores} (tasks/s times CPU per task "
        "over the measured windows). The event loop is the serving process's main thread (sidecar, "
        "cold, floor; the SDK pool has none): one loop can use at most one core, and new calls "
        "queue once it nears that.",
        "",
        f"| mode | streams | tasks/s | serving process | its event loop | load generator "
        f"| emulator | others | total (of {cores}) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        serving = _cores(r, "cpu_ms_per_task")
        loadgen = _cores(r, "client_cpu_ms_per_task") if r["mode"] in LOADGEN_MODES else 0.0
        emulator = _cores(r, "emulator_cpu_ms_per_task")
        others = float(r.get("other_load_cores", math.nan))
        parts = (serving, loadgen, emulator, others)
        total = math.nan if any(math.isnan(p) for p in parts) else sum(parts)
        loop = r.get("loop_busy")
        lines.append(
            f"| {r['mode']} | {r['level']} | {r['tasks_per_s']:.1f} | {_fmt(serving)} "
            f"| {_fmt(loop or None)} "
            f"| {_fmt(loadgen) if r['mode'] in LOADGEN_MODES else '-'} "
            f"| {_fmt(emulator)} | {_fmt(others)} | {_fmt(total)} |"
        )
    need = _loop_need(report)
    if need:
        lines += [
            "",
            "The sidecar's event loop at the floor's pace: the floor runs the same upstream "
            "work with no gRPC, so its task rate is what the callers would get without the "
            "sidecar; at that rate, the sidecar's loop would be busy for this fraction of one "
            "core (above about 0.7, queueing delays grow quickly; at 1 it cannot keep up).",
            "",
            "| streams | floor tasks/s | sidecar event-loop CPU ms/task "
            "| event-loop cores needed |",
            "|--:|--:|--:|--:|",
            *need,
        ]
    return lines


def _loop_need(report: dict[str, Any]) -> list[str]:
    by_key = {(r["mode"], r["level"]): r for r in report["rows"] if r.get("tasks")}
    lines = []
    for (mode, level), row in sorted(by_key.items(), key=lambda item: item[0][1]):
        floor = by_key.get(("floor", level))
        if mode != "sidecar" or floor is None:
            continue
        per_task = loop_ms_per_task(row)
        if math.isnan(per_task):
            continue
        rate = float(floor["tasks_per_s"])
        lines.append(f"| {level} | {rate:.1f} | {per_task:.2f} | {rate * per_task / 1000:.2f} |")
    return lines


def floors_table(report: dict[str, Any]) -> list[str]:
    """Return the sidecar's CPU per task against the two floors', as Markdown lines.

    The upstream floor (``floor``) does the upstream half of the sidecar's work
    and the gRPC floor (``grpc-floor``) the gRPC half, each with nothing else;
    the sidecar's CPU above their sum is what its own code adds (pool, call,
    writer, telemetry, hand-offs between them). Audio messages per task show
    that the gRPC floor wrote as many as the sidecar.
    """
    by_key = {(r["mode"], r["level"]): r for r in report["rows"] if r.get("tasks")}
    levels = sorted(
        n
        for (m, n) in by_key
        if m == "sidecar" and ("floor", n) in by_key and ("grpc-floor", n) in by_key
    )
    if not levels:
        return []
    lines = [
        "The sidecar's CPU per task against the floors' (ms per task of each serving "
        "process; the floors' sum is what the two halves of the sidecar's work cost with "
        "nothing else; audio messages per task, sidecar / gRPC floor; how often each event "
        "loop's thread blocked per task, i.e. its wake-ups):",
        "",
        "| streams | upstream floor | gRPC floor | sum | sidecar | sidecar - sum | sidecar / sum "
        "| sidecar event loop | audio messages per task | loop wake-ups per task, floor / "
        "gRPC floor / sidecar |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for n in levels:
        up, grpc, side = by_key["floor", n], by_key["grpc-floor", n], by_key["sidecar", n]
        total = float(up["cpu_ms_per_task"]) + float(grpc["cpu_ms_per_task"])
        mine = float(side["cpu_ms_per_task"])
        lines.append(
            f"| {n} | {_fmt(up['cpu_ms_per_task'])} | {_fmt(grpc['cpu_ms_per_task'])} "
            f"| {_fmt(total)} | {_fmt(mine)} | {_fmt(mine - total)} | {_fmt(mine / total)} "
            f"| {_fmt(loop_ms_per_task(side))} "
            f"| {_fmt(side.get('audio_chunks_per_task'))} / "
            f"{_fmt(grpc.get('audio_chunks_per_task'))} "
            f"| {_fmt(up.get('loop_waits_per_task'))} / {_fmt(grpc.get('loop_waits_per_task'))}"
            f" / {_fmt(side.get('loop_waits_per_task'))} |"
        )
    return lines

"""The project's performance goals, judged from one bench report (one pace).

The goals, for one sidecar process:

* **latency**: from 1 to 100 streams, the sidecar's first-audio overhead is at
  most the upstream floor's + 2 ms at p50 and + 5 ms at p99, whichever way
  callers use it (streaming ended by half-close or by the finish message, or
  unary);
* **CPU**: at 100 and 200 streams, with telemetry exported, the sidecar's CPU
  per task is at most 1.25 x the sum of the two floors' (the upstream floor's
  and the gRPC floor's), and at most the SDK pool client's;
* **capacity** (a figure, not a verdict): the highest concurrency tested at
  which the sidecar's p99 overhead stays within the floor's + 20 ms, with how
  busy its event loop was there (and any lower level that missed, since a
  p99 of a few hundred samples can be one hiccup).

Each verdict uses figures of one run only (modes compared with each other,
never with a number from another day), says by how much it was met or missed,
and says in how many repeats it held, each repeat against the same repeat of
the other mode: repeats are interleaved, so a verdict that holds in some
repeats and not in others is within the machine's noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Final

__all__ = [
    "CAPACITY_P99_MS",
    "CPU_LEVELS",
    "CPU_RATIO",
    "LATENCY_MAX_LEVEL",
    "LATENCY_MODES",
    "P50_MS",
    "P99_MS",
    "capacity",
    "targets",
]

LATENCY_MODES: Final = {
    "sidecar": "streaming, half-close",
    "sidecar-finish": "streaming, finish message",
    "sidecar-unary": "unary",
}
LATENCY_MAX_LEVEL: Final = 100
P50_MS: Final = 2.0
P99_MS: Final = 5.0
CPU_LEVELS: Final = (100, 200)
CPU_RATIO: Final = 1.25
CAPACITY_P99_MS: Final = 20.0

Row = dict[str, Any]


def _rows(report: dict[str, Any]) -> dict[tuple[str, int], Row]:
    return {(r["mode"], r["level"]): r for r in report["rows"] if r.get("tasks")}


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _repeats(mine: Row, other: Row) -> Iterator[tuple[dict[str, float], dict[str, float]]]:
    """Pairs of the same repeat of two rows (interleaved: minutes apart at most)."""
    theirs = {r["repeat"]: r for r in other.get("per_repeat", ())}
    for r in mine.get("per_repeat", ()):
        if r["repeat"] in theirs:
            yield r, theirs[r["repeat"]]


def _count(pairs: list[bool]) -> str:
    return f"{sum(pairs)} of {len(pairs)}" if pairs else "-"


def _latency(rows: dict[tuple[str, int], Row], mode: str) -> dict[str, str] | None:
    """The latency goal of one way of calling: every level up to 100 against the floor."""
    levels = sorted(
        n for (m, n) in rows if m == mode and n <= LATENCY_MAX_LEVEL and ("floor", n) in rows
    )
    if not levels:
        return None
    worst50 = max(
        (
            (rows[mode, n]["overhead_ms"]["p50"] - rows["floor", n]["overhead_ms"]["p50"], n)
            for n in levels
        ),
    )
    worst99 = max(
        (
            (rows[mode, n]["overhead_ms"]["p99"] - rows["floor", n]["overhead_ms"]["p99"], n)
            for n in levels
        ),
    )
    ok = worst50[0] <= P50_MS and worst99[0] <= P99_MS
    missed = [
        f"p50 by {worst50[0] - P50_MS:.1f} ms" if worst50[0] > P50_MS else "",
        f"p99 by {worst99[0] - P99_MS:.1f} ms" if worst99[0] > P99_MS else "",
    ]
    held = [
        a["overhead_p50_ms"] - b["overhead_p50_ms"] <= P50_MS
        and a["overhead_p99_ms"] - b["overhead_p99_ms"] <= P99_MS
        for n in levels
        for a, b in _repeats(rows[mode, n], rows["floor", n])
    ]
    return {
        "goal": f"{LATENCY_MODES[mode]} ({mode}), {levels[0]}-{levels[-1]} streams: overhead "
        f"≤ floor + {P50_MS:g} ms p50, + {P99_MS:g} ms p99",
        "measured": f"worst +{worst50[0]:.1f} ms p50 (at {worst50[1]}), "
        f"+{worst99[0]:.1f} ms p99 (at {worst99[1]})",
        "verdict": _verdict(ok) + ("" if ok else ": " + ", ".join(m for m in missed if m)),
        "repeats": _count(held),
    }


def _cpu(report: dict[str, Any], rows: dict[tuple[str, int], Row]) -> list[dict[str, str]]:
    out = []
    telemetry = report["settings"].get("telemetry", "off") == "otlp"
    for level in CPU_LEVELS:
        side = rows.get(("sidecar", level))
        if side is None:
            continue
        mine = float(side["cpu_ms_per_task"])
        if ("floor", level) in rows and ("grpc-floor", level) in rows:
            up, grpc = rows["floor", level], rows["grpc-floor", level]
            floors = float(up["cpu_ms_per_task"]) + float(grpc["cpu_ms_per_task"])
            bound = CPU_RATIO * floors
            grpc_repeats = {r["repeat"]: r for r in grpc.get("per_repeat", ())}
            held = [
                a["cpu_ms_per_task"]
                <= CPU_RATIO * (b["cpu_ms_per_task"] + grpc_repeats[a["repeat"]]["cpu_ms_per_task"])
                for a, b in _repeats(side, up)
                if a["repeat"] in grpc_repeats
            ]
            verdict = _verdict(mine <= bound) if telemetry else "not judged: telemetry off"
            if telemetry and mine > bound:
                verdict += f" by {mine - bound:.2f} ms"
            out.append(
                {
                    "goal": f"CPU per task at {level} streams, telemetry on: sidecar ≤ "
                    f"{CPU_RATIO:g} x (upstream floor + gRPC floor)",
                    "measured": f"{mine:.2f} ms vs {CPU_RATIO:g} x "
                    f"({up['cpu_ms_per_task']:.2f} + {grpc['cpu_ms_per_task']:.2f}) = "
                    f"{bound:.2f} ms ({mine / floors:.2f}x the floors)",
                    "verdict": verdict,
                    "repeats": _count(held),
                }
            )
        sdk = rows.get(("sdk-pool", level))
        if sdk is not None:
            theirs = float(sdk["cpu_ms_per_task"])
            held = [a["cpu_ms_per_task"] <= b["cpu_ms_per_task"] for a, b in _repeats(side, sdk)]
            verdict = _verdict(mine <= theirs) if telemetry else "not judged: telemetry off"
            if telemetry and mine > theirs:
                verdict += f" by {mine - theirs:.2f} ms"
            out.append(
                {
                    "goal": f"CPU per task at {level} streams, telemetry on: sidecar ≤ the SDK "
                    "pool client",
                    "measured": f"{mine:.2f} ms vs {theirs:.2f} ms",
                    "verdict": verdict,
                    "repeats": _count(held),
                }
            )
    return out


def capacity(report: dict[str, Any], mode: str = "sidecar") -> dict[str, Any] | None:
    """The highest level tested at which the p99 overhead stays within the floor's + 20 ms.

    Returns ``{"level", "loop_busy", "p99_above_floor_ms", "next", "missed_below"}``:
    ``next`` is the first level tested above it (which missed), or None when it
    is the highest tested; ``missed_below`` the lower levels that missed (a
    p99 of few samples that one hiccup decides). ``level`` is 0 when no level
    held; None is returned without both modes' rows.
    """
    rows = _rows(report)
    levels = sorted(n for (m, n) in rows if m == mode and ("floor", n) in rows)
    if not levels:
        return None

    def figures(n: int) -> dict[str, Any]:
        above = rows[mode, n]["overhead_ms"]["p99"] - rows["floor", n]["overhead_ms"]["p99"]
        busy = rows[mode, n].get("loop_busy", math.nan)
        return {"level": n, "p99_above_floor_ms": above, "loop_busy": busy}

    held = [n for n in levels if figures(n)["p99_above_floor_ms"] <= CAPACITY_P99_MS]
    best = max(held, default=0)
    above = [n for n in levels if n > best]
    return {
        **(
            figures(best)
            if best
            else {"level": 0, "p99_above_floor_ms": math.nan, "loop_busy": math.nan}
        ),
        "next": figures(above[0]) if above else None,
        "missed_below": [figures(n) for n in levels if n < best and n not in held],
    }


def targets(report: dict[str, Any]) -> list[dict[str, str]]:
    """Judge every goal this report has the rows for; see the module docstring."""
    rows = _rows(report)
    out = [v for mode in LATENCY_MODES if (v := _latency(rows, mode)) is not None]
    out += _cpu(report, rows)
    cap = capacity(report)
    if cap is not None:
        nxt = cap["next"]
        measured = (
            f"{cap['level']} streams (p99 +{cap['p99_above_floor_ms']:.1f} ms, event loop "
            f"{cap['loop_busy']:.2f} busy)"
            if cap["level"]
            else "below the lowest level tested"
        )
        measured += (
            f"; at {nxt['level']}: p99 +{nxt['p99_above_floor_ms']:.1f} ms, loop "
            f"{nxt['loop_busy']:.2f}"
            if nxt
            else "; the highest level tested"
        )
        for low in cap["missed_below"]:
            measured += f"; missed at {low['level']} (p99 +{low['p99_above_floor_ms']:.1f} ms)"
        out.append(
            {
                "goal": f"capacity: the most streams within the floor's p99 + "
                f"{CAPACITY_P99_MS:g} ms",
                "measured": measured,
                "verdict": "-",
                "repeats": "-",
            }
        )
    return out

"""The issue's "Done means" figures, judged from one bench report.

Each verdict uses figures of one run only (modes compared with each other,
never with a number from another day), and the latency ones also say in how
many repeats they held, each repeat against the same repeat of the other
mode: repeats are interleaved, so a verdict that holds in some repeats and
not in others is within the machine's noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["targets"]

_RepeatCheck = Callable[[dict[str, float], dict[str, float]], bool]


def _row(report: dict[str, Any], mode: str, level: int) -> dict[str, Any] | None:
    for row in report["rows"]:
        if row["mode"] == mode and row["level"] == level:
            row_: dict[str, Any] = row
            return row_
    return None


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(report: dict[str, Any]) -> list[dict[str, str]]:
    """Judge the issue's "Done means" figures that this report has the data for."""
    out: list[dict[str, str]] = []
    row: Callable[[str, int], dict[str, Any] | None] = lambda mode, level: _row(  # noqa: E731
        report, mode, level
    )
    for level, p50_max, p99_max in ((100, 3.0, 10.0), (200, 5.0, 20.0)):
        side, floor = row("sidecar", level), row("floor", level)
        if side and floor:
            d50 = side["overhead_ms"]["p50"] - floor["overhead_ms"]["p50"]
            d99 = side["overhead_ms"]["p99"] - floor["overhead_ms"]["p99"]

            out.append(
                {
                    "target": f"sidecar overhead above floor at {level}: "
                    f"≤ {p50_max:g} ms p50, ≤ {p99_max:g} ms p99",
                    "measured": f"+{d50:.1f} ms p50, +{d99:.1f} ms p99",
                    "verdict": _verdict(d50 <= p50_max and d99 <= p99_max),
                    "repeats": _repeats_meeting(side, floor, _above(p50_max, p99_max)),
                }
            )
    for level, ratio in ((100, 4), (200, 20)):
        side, sdk = row("sidecar", level), row("sdk-pool", level)
        if side and sdk:
            mine, theirs = side["overhead_ms"]["p99"], sdk["overhead_ms"]["p99"]
            out.append(
                {
                    "target": f"sidecar overhead p99 ≤ 1/{ratio} of sdk-pool's at {level}",
                    "measured": f"{mine:.1f} ms vs {theirs:.1f} ms (1/{theirs / mine:.1f})"
                    if mine > 0
                    else f"{mine:.1f} ms vs {theirs:.1f} ms",
                    "verdict": _verdict(mine <= theirs / ratio),
                    "repeats": _repeats_meeting(side, sdk, _within(ratio)),
                }
            )
    warm = next(
        (w for w in report["warmup"] if w["mode"] == "sidecar" and w["sockets"] == 100), None
    )
    if warm:
        sdk_warm = next(
            (w for w in report["warmup"] if w["mode"] == "sdk-pool" and w["sockets"] == 100), None
        )
        versus = f" (sdk-pool {sdk_warm['seconds']:.1f} s)" if sdk_warm else ""
        out.append(
            {
                "target": "100 sockets warm in under 1 s",
                "measured": f"{warm['seconds']:.2f} s{versus}",
                "verdict": _verdict(warm["seconds"] < 1.0),
            }
        )
    side = row("sidecar", 400)
    if side:
        out.append(
            {
                "target": "400 streams: zero errors, all audio, overhead p99 ≤ 50 ms",
                "measured": f"{side['errors']} errors, {side['audio_mismatches']} audio "
                f"mismatches in {side['tasks']:,} tasks, p99 {side['overhead_ms']['p99']:.1f} ms",
                "verdict": _verdict(side["audio_ok"] and side["overhead_ms"]["p99"] <= 50),
            }
        )
    side, sdk = row("sidecar", 100), row("sdk-pool", 100)
    if side and sdk:
        out.append(
            {
                "target": "sidecar CPU/task ≤ sdk-pool client CPU/task at 100",
                "measured": f"{side['cpu_ms_per_task']:.2f} ms vs {sdk['cpu_ms_per_task']:.2f} ms",
                "verdict": _verdict(side["cpu_ms_per_task"] <= sdk["cpu_ms_per_task"]),
            }
        )
    return out


def _above(p50_max: float, p99_max: float) -> _RepeatCheck:
    """A repeat's check: overhead at most this much above the other mode's, p50 and p99."""
    return lambda mine, base: (
        mine["overhead_p50_ms"] - base["overhead_p50_ms"] <= p50_max
        and mine["overhead_p99_ms"] - base["overhead_p99_ms"] <= p99_max
    )


def _within(ratio: float) -> _RepeatCheck:
    """A repeat's check: overhead p99 at most 1/``ratio`` of the other mode's."""
    return lambda mine, theirs: mine["overhead_p99_ms"] <= theirs["overhead_p99_ms"] / ratio


def _repeats_meeting(
    mine: dict[str, Any],
    other: dict[str, Any],
    meets: _RepeatCheck,
) -> str:
    """Return in how many repeats the target held, each against the same repeat of ``other``.

    Repeats are interleaved, so repeat k of both modes ran minutes apart at
    most; a verdict that holds in some repeats and not others is noise-bound.
    """
    theirs = {r["repeat"]: r for r in other.get("per_repeat", ())}
    pairs = [(r, theirs[r["repeat"]]) for r in mine.get("per_repeat", ()) if r["repeat"] in theirs]
    return f"{sum(meets(a, b) for a, b in pairs)} of {len(pairs)}" if pairs else "-"

"""Percentiles and the aggregation of runs into one row per mode and level."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Row", "RunResult", "aggregate", "percentile", "summary"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of already sorted values, nearest-rank; NaN if empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


def summary(values: Iterable[float]) -> dict[str, float]:
    """Return p50 / p90 / p99 / max of ``values`` (NaN when there are none)."""
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else math.nan,
    }


@dataclass
class RunResult:
    """One mode at one level in one repeat: what the client saw and what it cost."""

    mode: str
    level: int
    repeat: int
    tasks: int = 0
    errors: int = 0
    audio_mismatches: int = 0
    error_samples: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)  # e.g. "RESOURCE_EXHAUSTED X": n
    ttfb_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    breakdown: dict[str, list[float]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    # CPU seconds and peak RSS of the serving process (the sidecar for the
    # sidecar modes, the client process otherwise), and of the others.
    cpu_s: float = 0.0
    loop_cpu_s: float = 0.0  # the serving process's main thread: its event loop
    loop_waits: int = 0  # times that thread blocked (voluntary context switches)
    peak_rss_mb: float = 0.0
    client_cpu_s: float = 0.0
    emulator_cpu_s: float = 0.0
    other_cpu_s: float = 0.0  # CPU other processes on the machine used during the window
    connections_opened: int = 0  # upstream, during the measured window
    emulator_outcomes: dict[str, int] = field(default_factory=dict)
    warmup_s: float | None = None  # sockets warmed before the window, and how fast
    warmup_sockets: int = 0
    warmup_connections_opened: int = 0
    failure: str | None = None  # the run itself broke (a process died or hung)

    def to_dict(self, *, samples: bool) -> dict[str, Any]:
        data = dict(self.__dict__)
        if not samples:
            data.pop("ttfb_ms")
            data.pop("gaps_ms")
            data["breakdown"] = {k: summary(v) for k, v in self.breakdown.items()}
        return data


@dataclass
class Row:
    """All repeats of one mode at one level, merged."""

    mode: str
    level: int
    runs: int
    tasks: int
    errors: int
    audio_mismatches: int
    error_kinds: dict[str, int]
    ttfb_ms: dict[str, float]
    overhead_ms: dict[str, float]
    gap_p99_ms: float
    audio_chunks_per_task: float  # audio messages (or frames) per task that had audio
    tasks_per_s: float
    cpu_ms_per_task: float
    client_cpu_ms_per_task: float
    emulator_cpu_ms_per_task: float
    other_load_cores: float  # CPU other processes took during the windows, in cores
    loop_busy: float  # the serving process's main thread (event loop), in cores (0..1)
    loop_waits_per_task: float  # times that thread blocked per task: its wake-ups
    peak_rss_mb: float
    connections_opened: int
    warmup_s: float | None
    warmup_sockets: int
    per_repeat: list[dict[str, float]]
    breakdown_ms: dict[str, dict[str, float]]  # e.g. the sidecar's own first_audio_ms
    failures: list[str]

    @property
    def audio_ok(self) -> bool:
        """Return True if every task completed with exactly the expected audio bytes."""
        return self.tasks > 0 and self.errors == 0 and self.audio_mismatches == 0

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["audio_ok"] = self.audio_ok
        return data


def aggregate(runs: Sequence[RunResult], intrinsic_ms: float) -> Row:
    """Merge the repeats of one mode and level; percentiles over all their samples."""
    first = runs[0]
    ttfb = [v for r in runs for v in r.ttfb_ms]
    tasks = sum(r.tasks for r in runs)
    elapsed = sum(r.elapsed_s for r in runs)
    ttfb_summary = summary(ttfb)
    warm = [r.warmup_s for r in runs if r.warmup_s is not None]

    def per_task(total: float) -> float:
        return total * 1000 / tasks if tasks else math.nan

    kinds: dict[str, int] = {}
    for run in runs:
        for kind, count in run.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count
    # Every task with audio has one TTFB sample and one gap per further chunk.
    gaps = sum(len(r.gaps_ms) for r in runs)

    return Row(
        mode=first.mode,
        level=first.level,
        runs=len(runs),
        tasks=tasks,
        errors=sum(r.errors for r in runs),
        audio_mismatches=sum(r.audio_mismatches for r in runs),
        error_kinds=dict(sorted(kinds.items())),
        ttfb_ms=ttfb_summary,
        overhead_ms={k: v - intrinsic_ms for k, v in ttfb_summary.items()},
        gap_p99_ms=summary(v for r in runs for v in r.gaps_ms)["p99"],
        audio_chunks_per_task=(gaps + len(ttfb)) / len(ttfb) if ttfb else math.nan,
        tasks_per_s=tasks / elapsed if elapsed > 0 else math.nan,
        cpu_ms_per_task=per_task(sum(r.cpu_s for r in runs)),
        client_cpu_ms_per_task=per_task(sum(r.client_cpu_s for r in runs)),
        emulator_cpu_ms_per_task=per_task(sum(r.emulator_cpu_s for r in runs)),
        other_load_cores=sum(r.other_cpu_s for r in runs) / elapsed if elapsed > 0 else math.nan,
        loop_busy=sum(r.loop_cpu_s for r in runs) / elapsed if elapsed > 0 else math.nan,
        loop_waits_per_task=sum(r.loop_waits for r in runs) / tasks if tasks else math.nan,
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        connections_opened=sum(r.connections_opened for r in runs),
        warmup_s=max(warm) if warm else None,
        warmup_sockets=first.warmup_sockets,
        per_repeat=[
            {
                "repeat": r.repeat,
                "tasks": r.tasks,
                "overhead_p50_ms": summary(r.ttfb_ms)["p50"] - intrinsic_ms,
                "overhead_p99_ms": summary(r.ttfb_ms)["p99"] - intrinsic_ms,
                "cpu_ms_per_task": r.cpu_s * 1000 / r.tasks if r.tasks else math.nan,
            }
            for r in runs
        ],
        breakdown_ms={
            key: summary(v for r in runs for v in r.breakdown.get(key, ()))
            for key in sorted({k for r in runs for k in r.breakdown})
        },
        failures=[r.failure for r in runs if r.failure],
    )

"""The bench's pure parts: percentiles, fragments, the expected audio, the schedule, verdicts."""

from __future__ import annotations

import math
from typing import Any

from cosyvoice_sidecar_bench.budget import budget_tables
from cosyvoice_sidecar_bench.runner import BenchSettings, schedule
from cosyvoice_sidecar_bench.stats import RunResult, aggregate, percentile
from cosyvoice_sidecar_bench.targets import targets
from cosyvoice_sidecar_bench.workload import DEFAULT_TEXT, Workload, split_fragments

from sidecar.emulator import EmulatorKnobs


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..100 is 50, p99 is 99, max is 100; no samples give NaN."""
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_fragments_rejoin_to_the_text() -> None:
    """Fragments cut at word boundaries and concatenate back to the text."""
    assert len(DEFAULT_TEXT) == 40
    for count in (1, 2, 3, 7, 100):
        fragments = split_fragments(DEFAULT_TEXT, count)
        assert "".join(fragments) == DEFAULT_TEXT
        assert len(fragments) == min(count, len(DEFAULT_TEXT.split()))


def test_expected_audio_follows_the_knobs() -> None:
    """Expected bytes: 40 chars x 60 ms at 22050 Hz, 16-bit; intrinsic = start + first packet."""
    knobs = EmulatorKnobs(first_packet_delay_s=0.15, start_delay_s=0.01).to_dict()
    workload = Workload.build(DEFAULT_TEXT, 2, 22050, knobs)
    assert workload.expected_bytes == 2 * round(40 * 60 * 22050 / 1000)
    assert workload.intrinsic_ms == 160.0
    assert workload.task_seconds(0.25) == (160 + 2400 * 0.25) / 1000


def test_schedule_interleaves_and_rotates() -> None:
    """Every mode runs once per level and repeat; the first mode changes from level to level."""
    settings = BenchSettings(levels=(1, 20, 100), repeats=2, text=DEFAULT_TEXT)
    plan = list(schedule(settings))
    runs = [(r, n, m) for r, n, slot in plan for m in slot]
    assert len(runs) == len(set(runs)) == 2 * 3 * len(settings.modes)
    firsts = [slot[0] for r, n, slot in plan if r == 0][:: len(plan) // 6]
    assert len(set(firsts)) > 1
    # The two sidecar RPCs share a slot, so they share one sidecar process.
    assert any(set(slot) == {"sidecar", "sidecar-unary"} for _, _, slot in plan)


def _row(mode: str, level: int, ttfb: list[float], cpu_s: float = 1.0) -> dict[str, Any]:
    run = RunResult(mode, level, 0, tasks=len(ttfb), ttfb_ms=ttfb, elapsed_s=1.0, cpu_s=cpu_s)
    return aggregate([run], intrinsic_ms=150.0).to_dict()


def test_targets_compare_modes_of_one_report() -> None:
    """Verdicts use overhead differences and ratios of the same run."""
    data = {
        "rows": [
            _row("floor", 100, [152.0] * 100),
            _row("sidecar", 100, [154.0] * 98 + [170.0] * 2),  # +2 p50, +18 p99: p99 not met
            _row("sdk-pool", 100, [155.0] * 98 + [200.0] * 2, cpu_s=5.0),  # p99 50 ms > 4 x 20
        ],
        "warmup": [{"mode": "sidecar", "level": 100, "sockets": 100, "seconds": 0.4}],
    }
    verdicts = {v["target"]: v["verdict"] for v in targets(data)}
    assert verdicts["sidecar overhead above floor at 100: ≤ 3 ms p50, ≤ 10 ms p99"] == "NOT met"
    assert verdicts["sidecar overhead p99 ≤ 1/4 of sdk-pool's at 100"] == "NOT met"
    assert verdicts["100 sockets warm in under 1 s"] == "met"
    assert verdicts["sidecar CPU/task ≤ sdk-pool client CPU/task at 100"] == "met"
    assert not any("200" in t for t in verdicts)


def test_budget_adds_up_the_processes_and_the_loop_at_the_floor_pace() -> None:
    """Cores = tasks/s x CPU per task per process; the loop's need is at the floor's task rate."""

    def row(mode: str, tasks: int, cpu: float, loop: float, client: float, other: float) -> Any:
        run = RunResult(mode, 200, 0, tasks=tasks, ttfb_ms=[160.0] * tasks, elapsed_s=2.0)
        run.cpu_s, run.loop_cpu_s, run.client_cpu_s = cpu, loop, client
        run.emulator_cpu_s, run.other_cpu_s = 0.6, other
        return aggregate([run], intrinsic_ms=150.0).to_dict()

    sidecar = row("sidecar", 400, cpu=1.6, loop=1.44, client=0.4, other=0.2)
    floor = row("floor", 500, cpu=1.0, loop=0.9, client=1.0, other=0.0)
    lines = budget_tables({"rows": [sidecar, floor], "machine": {"cores": 2}})

    # sidecar: 200 tasks/s; 0.8 cores, loop 0.72, load generator 0.2, emulator 0.3, others 0.1.
    assert "| sidecar | 200 | 200.0 | 0.80 | 0.72 | 0.20 | 0.30 | 0.10 | 1.40 |" in lines
    # floor: the client is the serving process, so no load generator is counted twice.
    assert "| floor | 200 | 250.0 | 0.50 | 0.45 | - | 0.30 | 0.00 | 0.80 |" in lines
    # The sidecar's loop costs 3.6 ms per task; at the floor's 250 tasks/s that is 0.90 cores.
    assert "| 200 | 250.0 | 3.60 | 0.90 |" in lines


def test_latency_targets_count_the_repeats_that_meet_them() -> None:
    """Each repeat is judged against the same repeat of the other mode."""

    def row(mode: str, per_repeat: list[list[float]]) -> dict[str, Any]:
        runs = [
            RunResult(mode, 100, k, tasks=len(t), ttfb_ms=t, elapsed_s=1.0, cpu_s=1.0)
            for k, t in enumerate(per_repeat)
        ]
        return aggregate(runs, intrinsic_ms=150.0).to_dict()

    floor = row("floor", [[152.0] * 100, [152.0] * 100, [160.0] * 100])
    # Repeat 0: +2 / +2 (meets); repeat 1: +2 p50 but +30 p99 (misses); repeat 2: +1 / +1.
    sidecar = row("sidecar", [[154.0] * 100, [154.0] * 98 + [182.0] * 2, [161.0] * 100])
    verdicts = {v["target"]: v for v in targets({"rows": [floor, sidecar], "warmup": []})}
    above = verdicts["sidecar overhead above floor at 100: ≤ 3 ms p50, ≤ 10 ms p99"]
    assert above["repeats"] == "2 of 3"

"""The bench's pure parts: percentiles, fragments, the expected audio, the schedule, verdicts,
the gRPC floor's frames, the fleet's shares, the plot's ticks."""

from __future__ import annotations

import math
from typing import Any

import pytest
from cosyvoice_sidecar_bench.budget import budget_tables, floors_table
from cosyvoice_sidecar_bench.fleet import FleetPlan
from cosyvoice_sidecar_bench.grpc_floor import FloorSpec, frame_plan
from cosyvoice_sidecar_bench.profile import parts
from cosyvoice_sidecar_bench.report import log_ticks
from cosyvoice_sidecar_bench.runner import BenchSettings, schedule
from cosyvoice_sidecar_bench.sequential import open_text
from cosyvoice_sidecar_bench.stats import RunResult, aggregate, percentile
from cosyvoice_sidecar_bench.targets import capacity, targets
from cosyvoice_sidecar_bench.worker import WorkerSpec
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
    # The three ways of calling a sidecar share a slot, so they share one sidecar process;
    # the gRPC floor has a process of its own.
    assert any(set(slot) == {"sidecar", "sidecar-finish", "sidecar-unary"} for _, _, slot in plan)
    assert all(slot == ("grpc-floor",) for _, _, slot in plan if "grpc-floor" in slot)


def test_worker_spec_knows_how_streams_end() -> None:
    """Half-close is the default end of a stream's input; anything but the three ends is refused."""
    workload = Workload(text="a", fragments=["a"], sample_rate=22050)
    spec = WorkerSpec("grpc-stream", 1, "127.0.0.1:1", workload, 0.0, 1.0, 1.0)
    assert spec.end == "half-close"
    assert WorkerSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="end must be one of"):
        WorkerSpec("grpc-stream", 1, "127.0.0.1:1", workload, 0.0, 1.0, 1.0, end="hang-up")


def test_grpc_floor_sends_the_emulators_frames() -> None:
    """Frames of chunk_ms of audio, the last one shorter, paced chunk_ms x factor apart."""
    spec = FloorSpec(
        listen="127.0.0.1:0",
        first_audio_ms=150.0,
        chunk_ms=100,
        realtime_factor=0.25,
        sample_rate=22050,
        audio_bytes=4410 * 3 + 100,
        text="x",
    )
    plan = frame_plan(spec)
    assert [size for _, size in plan] == [4410, 4410, 4410, 100]
    assert [round(due, 6) for due, _ in plan] == [0.15, 0.175, 0.2, 0.225]


def test_fleet_streams_spread_over_the_sidecars() -> None:
    """Every stream goes to one sidecar; the shares differ by one at most."""
    plan = FleetPlan(sidecars=3, quota=5, streams=10)
    assert [plan.streams_of(i) for i in range(3)] == [4, 3, 3]
    with pytest.raises(ValueError, match="at least a stream per sidecar"):
        FleetPlan(sidecars=3, streams=2)


def test_sequential_text_has_no_sentence_end() -> None:
    """The check's text waits for finish-task: trailing sentence ends go, the rest stays."""
    assert open_text(DEFAULT_TEXT) == DEFAULT_TEXT[:-1]
    assert open_text("One. Two!? ") == "One. Two"
    assert open_text("\u4f60\u597d\u3002") == "\u4f60\u597d"


@pytest.mark.parametrize(
    ("lo", "hi"), [(151.0, 157.0), (150.2, 150.9), (1.0, 1000.0), (0.1, 300.0), (2.0, 40.0)]
)
def test_log_axis_ticks_label_any_spread(lo: float, hi: float) -> None:
    """A log axis gets 3-10 round labels inside its range, even when it spans a few ms."""
    ticks = log_ticks(lo, hi)
    assert 3 <= len(ticks) <= 10, ticks
    assert all(lo <= t <= hi for t in ticks), ticks
    assert ticks == sorted(set(ticks))
    assert all(len(f"{t:g}") <= 6 for t in ticks), ticks  # round values, short labels


def _row(
    mode: str, level: int, ttfb: list[float], cpu_s: float = 1.0, repeat: int = 0
) -> dict[str, Any]:
    run = RunResult(mode, level, repeat, tasks=len(ttfb), ttfb_ms=ttfb, elapsed_s=1.0, cpu_s=cpu_s)
    return aggregate([run], intrinsic_ms=150.0).to_dict()


def _report(*rows: dict[str, Any], telemetry: str = "otlp") -> dict[str, Any]:
    return {"rows": list(rows), "settings": {"telemetry": telemetry}}


def test_latency_goals_compare_each_way_of_calling_with_the_floor() -> None:
    """Up to 100 streams, each way of calling is judged by its worst level, with the miss."""
    data = _report(
        _row("floor", 1, [152.0] * 100),
        _row("floor", 100, [152.0] * 100),
        _row("sidecar", 1, [153.0] * 100),
        _row("sidecar", 100, [154.0] * 98 + [160.0] * 2),  # +2 p50, +8 p99: p99 missed by 3
        _row("sidecar-unary", 100, [153.5] * 100),
        _row("floor", 200, [152.0] * 100),
        _row("sidecar", 200, [190.0] * 100),  # beyond 100 streams: not a latency goal
    )
    verdicts = {v["goal"].split(",")[0]: v for v in targets(data)}
    stream = verdicts["streaming"]
    assert stream["goal"].startswith("streaming, half-close (sidecar), 1-100 streams")
    assert stream["measured"] == "worst +2.0 ms p50 (at 100), +8.0 ms p99 (at 100)"
    assert stream["verdict"] == "NOT met: p99 by 3.0 ms"
    assert stream["repeats"] == "1 of 2"  # level 1 held, level 100 did not
    assert verdicts["unary (sidecar-unary)"]["verdict"] == "met"
    assert not any("finish" in goal for goal in verdicts)  # no rows: no verdict


def test_cpu_goals_take_the_sum_of_both_floors_and_need_telemetry() -> None:
    """CPU per task against 1.25 x (floor + gRPC floor) and the SDK pool's, with telemetry on."""
    rows = (
        _row("floor", 100, [152.0] * 100, cpu_s=0.2),  # 2 ms per task
        _row("grpc-floor", 100, [152.0] * 100, cpu_s=0.1),  # 1 ms per task
        _row("sidecar", 100, [152.0] * 100, cpu_s=0.4),  # 4 ms: over 1.25 x 3 by 0.25
        _row("sdk-pool", 100, [152.0] * 100, cpu_s=0.5),  # 5 ms
    )
    verdicts = {v["goal"]: v for v in targets(_report(*rows))}
    floors = verdicts[
        "CPU per task at 100 streams, telemetry on: sidecar ≤ 1.25 x (upstream floor + gRPC floor)"
    ]
    assert floors["measured"] == "4.00 ms vs 1.25 x (2.00 + 1.00) = 3.75 ms (1.33x the floors)"
    assert floors["verdict"] == "NOT met by 0.25 ms"
    assert floors["repeats"] == "0 of 1"
    sdk = verdicts["CPU per task at 100 streams, telemetry on: sidecar ≤ the SDK pool client"]
    assert (sdk["verdict"], sdk["repeats"]) == ("met", "1 of 1")
    off = {v["goal"]: v["verdict"] for v in targets(_report(*rows, telemetry="off"))}
    assert set(v for g, v in off.items() if g.startswith("CPU")) == {"not judged: telemetry off"}


def test_capacity_is_the_highest_level_within_the_floor_plus_20_ms() -> None:
    """Capacity: the highest level with p99 within the floor's + 20 ms; a lower miss is named."""
    rows = [_row("floor", n, [152.0] * 100) for n in (20, 100, 200, 400)]
    rows += [
        _row("sidecar", 20, [155.0] * 98 + [180.0] * 2),  # +28 p99: one hiccup, missed
        _row("sidecar", 100, [155.0] * 100),
        _row("sidecar", 200, [160.0] * 98 + [171.0] * 2),  # +19 p99: within
        _row("sidecar", 400, [160.0] * 98 + [200.0] * 2),  # +48 p99
    ]
    cap = capacity(_report(*rows))
    assert cap is not None
    assert (cap["level"], cap["p99_above_floor_ms"]) == (200, 19.0)
    assert cap["next"]["level"] == 400
    assert [low["level"] for low in cap["missed_below"]] == [20]
    goal = next(v for v in targets(_report(*rows)) if v["goal"].startswith("capacity"))
    assert goal["measured"].startswith("200 streams (p99 +19.0 ms")
    assert goal["measured"].endswith("missed at 20 (p99 +28.0 ms)")
    none = capacity(_report(_row("floor", 20, [152.0] * 100), _row("sidecar", 20, [190.0] * 100)))
    assert none is not None
    assert (none["level"], none["next"]["level"]) == (0, 20)


def test_floors_table_sets_the_sidecar_against_the_sum() -> None:
    """The sidecar's CPU per task, the floors' sum, what it adds and the ratio."""
    rows = (
        _row("floor", 100, [152.0] * 100, cpu_s=0.2),
        _row("grpc-floor", 100, [152.0] * 100, cpu_s=0.1),
        _row("sidecar", 100, [152.0] * 100, cpu_s=0.45),
    )
    lines = floors_table({"rows": list(rows)})
    assert any(
        line.startswith("| 100 | 2.00 | 1.00 | 3.00 | 4.50 | 1.50 | 1.50 |") for line in lines
    )


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


def test_profile_parts_name_what_each_sample_did() -> None:
    """A sample belongs to the deepest part it was in; grpc's C calls count as grpc."""
    loop = "BaseEventLoop._run_once (asyncio/base_events.py:1);Handle._run (asyncio/events.py:2)"
    wrapped = (
        "TelemetryInterceptor.intercept_service.<locals>.wrapped "
        "(sidecar/telemetry/_interceptor.py:9)"
    )
    write = (
        f"{loop};{wrapped};ResponseWriter.run (sidecar/rpc/_writer.py:3);"
        "ResponseWriter._write (sidecar/rpc/_writer.py:4) 5"
    )
    span = f"{loop};{wrapped};Tracer.start_span (trace/__init__.py:7) 2"
    read = f"{loop};Call._read (sidecar/call/_call.py:5);Frame.parse (websockets/frames.py:6) 3"
    export = "Thread.run (threading.py:1);BatchProcessor.worker (_shared_internal/__init__.py:2) 4"
    counts = parts("\n".join((write, span, read, export)))
    assert counts == {
        "grpc C core (awaited from Python)": 5,
        "telemetry: spans, metrics": 2,
        "websockets": 3,
        "telemetry: export thread": 4,
    }

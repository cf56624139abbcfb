"""The bench command end to end in its --quick preset: it runs, and its JSON has the promised shape.

Timings are never asserted (CI machines are shared); what is asserted is that
every mode produced rows, every task got exactly the expected audio, and the
report carries the fields the documentation names. The sidecar modes run on
the Go load generator (the default; it needs ``go``, see conftest) and, in a
shorter run, on the Python one. The sequential check and the fleet comparison
run in small configurations too (the fleet needs ``redis-server``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cosyvoice_sidecar_bench.runner import DEFAULT_MODES

from tests.helpers import require_executable
from tests.timing import scaled

PERCENTILES = {"p50", "p90", "p99", "max"}
ROW_FIELDS = {
    "mode",
    "level",
    "runs",
    "tasks",
    "errors",
    "audio_mismatches",
    "error_kinds",
    "ttfb_ms",
    "overhead_ms",
    "gap_p99_ms",
    "audio_chunks_per_task",
    "tasks_per_s",
    "cpu_ms_per_task",
    "client_cpu_ms_per_task",
    "loop_busy",
    "loop_waits_per_task",
    "emulator_cpu_ms_per_task",
    "other_load_cores",
    "peak_rss_mb",
    "connections_opened",
    "warmup_s",
    "warmup_sockets",
    "per_repeat",
    "breakdown_ms",
    "failures",
    "audio_ok",
}


def _bench(
    *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, no shell
        [sys.executable, "-m", "cosyvoice_sidecar_bench", *args],
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        check=False,
        env=env,
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_sidecar_rows(
    rows: dict[tuple[str, int], dict[str, Any]], levels: tuple[int, ...], mode: str = "sidecar"
) -> None:
    """Check that the sidecar rows say where the time went and what the load generator cost."""
    for level in levels:
        row = rows[mode, level]
        split = row["breakdown_ms"]
        assert {"server_first_audio_ms", "client_started_ms"} <= split.keys()
        assert split["server_first_audio_ms"].keys() == PERCENTILES
        assert _number(row["client_cpu_ms_per_task"])
        assert row["client_cpu_ms_per_task"] > 0


@pytest.mark.timeout(scaled(300))
def test_quick_bench_writes_a_complete_report(tmp_path: Path, go: str) -> None:
    """--quick runs every default mode at levels 1 and 4 and reports each with all its fields."""
    out = tmp_path / "bench.json"
    done = _bench("--quick", "--json", str(out), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| mode | streams |" in done.stdout
    assert "repeat 1" in done.stderr  # the progress indicator
    assert "building the Go load generator" in done.stderr
    assert "driven by the Go load generator (clients/go/cmd/loadgen, go1." in done.stdout
    assert "| load generator CPU ms/task |" in done.stdout
    assert "| mode | streams | tasks/s | serving process | its event loop |" in done.stdout
    assert "| streams | floor tasks/s | sidecar event-loop CPU ms/task |" in done.stdout
    assert "| streams | upstream floor | gRPC floor | sum | sidecar |" in done.stdout
    assert "| goal | measured | verdict | repeats meeting it |" in done.stdout
    assert "issue" not in done.stdout.lower()  # the report speaks of goals, not of planning
    report = json.loads(out.read_text())

    assert report["schema"] == "cosyvoice-sidecar-bench/2"
    assert report["settings"]["preset"] == "quick"
    assert report["settings"]["loadgen"] == "go"
    assert report["loadgen"]["name"] == "go"
    assert report["loadgen"]["version"].startswith("go1.")
    assert {"cores", "cpu", "python", "packages", "loadavg_start"} <= report["machine"].keys()
    assert report["machine"]["packages"]["grpcio"]
    knobs = report["emulator_knobs"]
    assert (knobs["handshake_delay_s"], knobs["first_packet_delay_s"]) == (0.1, 0.15)
    assert (knobs["realtime_factor"], knobs["chunk_ms"]) == (0.25, 100)
    assert report["workload"]["expected_bytes"] > 0
    assert len(report["workload"]["fragments"]) >= 2

    rows = {(r["mode"], r["level"]): r for r in report["rows"]}
    assert set(rows) == {(m, n) for m in DEFAULT_MODES for n in (1, 4)}
    for key, row in rows.items():
        assert row.keys() >= ROW_FIELDS, key
        assert row["failures"] == [], (key, row["failures"])
        assert row["tasks"] >= 1, key
        assert row["audio_ok"], (key, row["errors"], row["audio_mismatches"], done.stdout[-2000:])
        for field in ("ttfb_ms", "overhead_ms"):
            assert row[field].keys() == PERCENTILES, key
            assert all(_number(v) for v in row[field].values()), key
        assert _number(row["cpu_ms_per_task"]), key
        assert _number(row["peak_rss_mb"]), key
    # Connections opened in the window: one per task for cold, none for the warm modes.
    for level in (1, 4):
        assert rows["cold", level]["connections_opened"] == rows["cold", level]["tasks"]
        for mode in ("floor", "sdk-pool", "sidecar", "sidecar-finish", "grpc-floor"):
            assert rows[mode, level]["connections_opened"] == 0, mode
        # The gRPC floor writes as many audio messages per task as the sidecar.
        chunks = rows["sidecar", level]["audio_chunks_per_task"]
        assert rows["grpc-floor", level]["audio_chunks_per_task"] == pytest.approx(chunks, abs=1)

    _check_sidecar_rows(rows, (1, 4))
    _check_sidecar_rows(rows, (1, 4), mode="sidecar-finish")
    # Telemetry on (the default): every sidecar call was traced and exported to the sink.
    assert report["settings"]["telemetry"] == "otlp"
    sink = report["otlp_sink"]
    sidecar_tasks = sum(
        rows[m, n]["tasks"] for m in ("sidecar", "sidecar-finish", "sidecar-unary") for n in (1, 4)
    )
    assert sink["spans"] >= sidecar_tasks
    assert f"which received {sink['spans']:,} spans" in done.stdout
    # The event loop (main thread) is measured, and is part of its process's CPU.
    for mode in ("sidecar", "floor", "cold"):
        row = rows[mode, 4]
        process_cores = row["cpu_ms_per_task"] * row["tasks_per_s"] / 1000
        assert 0 < row["loop_busy"] <= process_cores + 0.05, (mode, row["loop_busy"])
    assert rows["sdk-pool", 4]["loop_busy"] == 0  # threads, no event loop
    warm = {(w["mode"], w["level"]): w for w in report["warmup"]}
    assert {("sidecar", 4), ("floor", 4), ("sdk-pool", 4)} <= warm.keys()
    assert ("grpc-floor", 4) not in warm  # nothing to warm
    assert all(_number(w["seconds"]) for w in warm.values())
    assert len(report["runs"]) == len(DEFAULT_MODES) * 2


@pytest.mark.timeout(scaled(120))
def test_quick_bench_on_the_python_load_generator(tmp_path: Path) -> None:
    """--loadgen python drives the sidecar modes with the Python worker; no Go needed."""
    out = tmp_path / "bench.json"
    args = ("--quick", "--loadgen", "python", "--modes", "sidecar,sidecar-unary", "--levels", "4")
    done = _bench(*args, "--telemetry", "off", "--json", str(out), timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "building the Go load generator" not in done.stderr
    assert (
        "driven by the Python load generator (python -m cosyvoice_sidecar_bench.worker"
        in done.stdout
    )
    report = json.loads(out.read_text())
    assert report["settings"]["loadgen"] == "python"
    assert report["loadgen"]["name"] == "python"
    assert report["otlp_sink"] is None  # telemetry off: no collector
    assert "Telemetry off" in done.stdout
    rows = {(r["mode"], r["level"]): r for r in report["rows"]}
    assert set(rows) == {("sidecar", 4), ("sidecar-unary", 4)}
    for key, row in rows.items():
        assert row["failures"] == [], (key, row["failures"])
        assert row["audio_ok"], (key, row["errors"], row["audio_mismatches"], done.stdout[-2000:])
    _check_sidecar_rows(rows, (4,))


def test_go_load_generator_without_go_fails_clearly(tmp_path: Path) -> None:
    """Without `go` on PATH, --loadgen go (the default) says to use --loadgen python, exit 2."""
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no go, no anything
    done = _bench("--quick", "--modes", "floor,sidecar", timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    assert "`go` is not on PATH" in done.stderr
    assert "use --loadgen python" in done.stderr
    assert "starting the emulator" not in done.stderr  # it fails before starting anything


def test_plot_without_matplotlib_fails_clearly(tmp_path: Path) -> None:
    """--plot names the missing optional dependency and exits 2 before starting anything."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from cosyvoice_sidecar_bench.__main__ import main\n"
        f"sys.exit(main(['--quick', '--plot', {str(tmp_path / 'x.png')!r}]))"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, no shell
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--plot needs matplotlib" in done.stderr
    assert "pip install" in done.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.timeout(scaled(120))
def test_sequential_check_reports_both_ways(tmp_path: Path, go: str) -> None:
    """--sequential alternates half-close and finish; its exit code is its verdict."""
    out = tmp_path / "sequential.json"
    done = _bench("--sequential", "3", "--json", str(out), timeout=90)
    report = json.loads(out.read_text())
    assert report["schema"] == "cosyvoice-sidecar-bench-sequential/1"
    assert (report["tasks"], report["errors"], report["audio_mismatches"]) == (6, 0, 0)
    assert {end: row["calls"] for end, row in report["ends"].items()} == {
        "half-close": 3,
        "finish": 3,
    }
    assert not report["workload"]["text"].endswith(".")  # synthesis waits for finish-task
    assert done.returncode == (0 if report["met"] else 1), done.stderr[-2000:]
    assert "| input ended by | calls | overhead p50 |" in done.stdout


@pytest.mark.timeout(scaled(180))
def test_fleet_comparison_keeps_the_account_within_its_quota(tmp_path: Path, go: str) -> None:
    """--fleet: with the quota no task is throttled and the account never runs more than it;
    without it, the sidecars together exceed the account and DashScope throttles them."""
    require_executable("redis-server")
    out = tmp_path / "fleet.json"
    args = ("--fleet", "2", "--fleet-quota", "2", "--fleet-streams", "6", "--quick")
    done = _bench(*args, "--duration", "1", "--json", str(out), timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["schema"] == "cosyvoice-sidecar-bench-fleet/1"
    on, off = report["cases"]["on"], report["cases"]["off"]
    for case in (on, off):
        assert case["failures"] == []
        assert case["completed"] > 0
        assert case["audio_mismatches"] == 0
        assert case["other_errors"] == 0, case["error_kinds"]
    assert on["resource_exhausted_throttled"] == on["upstream_refused"] == 0
    assert on["upstream_peak_tasks"] <= 2
    assert off["resource_exhausted_throttled"] > 0
    assert off["upstream_refused"] > 0
    assert "| fleet quota | calls | completed |" in done.stdout


@pytest.mark.timeout(scaled(120))
def test_sidecar_fleet_mode_runs_against_a_local_redis(tmp_path: Path, go: str) -> None:
    """The sidecar-fleet mode: one sidecar with the fleet quota on, interleaved with sidecar."""
    require_executable("redis-server")
    out = tmp_path / "bench.json"
    args = ("--quick", "--modes", "sidecar,sidecar-fleet", "--levels", "4")
    done = _bench(*args, "--telemetry", "off", "--json", str(out), timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    for mode in ("sidecar", "sidecar-fleet"):
        assert rows[mode]["failures"] == []
        assert rows[mode]["audio_ok"], rows[mode]["error_kinds"]
    command = json.loads(out.read_text())["sidecar_commands"]["sidecar-fleet 4"]
    assert "--fleet-redis-url" in command


def test_fleet_without_redis_fails_clearly(tmp_path: Path, go: str) -> None:
    """Without redis-server on PATH, --fleet says what to install and exits 2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "go").symlink_to(go)
    env = {**os.environ, "PATH": str(bin_dir)}
    done = _bench("--fleet", "2", "--quick", timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    assert "redis-server" in done.stderr
    assert "starting" not in done.stderr

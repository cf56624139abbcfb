"""The bench command end to end in its --quick preset: it runs, and its JSON has the promised shape.

Timings are never asserted (CI machines are shared); what is asserted is that
every mode produced rows, every task got exactly the expected audio, and the
report carries the fields the README and the issue name. The sidecar modes run
on the Go load generator (the default; it needs ``go``, see conftest) and, in a
shorter run, on the Python one.
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

from tests.timing import scaled

PERCENTILES = {"p50", "p90", "p99", "max"}
ROW_FIELDS = {
    "mode",
    "level",
    "runs",
    "tasks",
    "errors",
    "audio_mismatches",
    "ttfb_ms",
    "overhead_ms",
    "gap_p99_ms",
    "tasks_per_s",
    "cpu_ms_per_task",
    "client_cpu_ms_per_task",
    "loop_busy",
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
    rows: dict[tuple[str, int], dict[str, Any]], levels: tuple[int, ...]
) -> None:
    """Check that the sidecar rows say where the time went and what the load generator cost."""
    for level in levels:
        row = rows["sidecar", level]
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
    report = json.loads(out.read_text())

    assert report["schema"] == "cosyvoice-sidecar-bench/1"
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
        assert rows["floor", level]["connections_opened"] == 0
        assert rows["sdk-pool", level]["connections_opened"] == 0
        assert rows["sidecar", level]["connections_opened"] == 0

    _check_sidecar_rows(rows, (1, 4))
    # The event loop (main thread) is measured, and is part of its process's CPU.
    for mode in ("sidecar", "floor", "cold"):
        row = rows[mode, 4]
        process_cores = row["cpu_ms_per_task"] * row["tasks_per_s"] / 1000
        assert 0 < row["loop_busy"] <= process_cores + 0.05, (mode, row["loop_busy"])
    assert rows["sdk-pool", 4]["loop_busy"] == 0  # threads, no event loop
    warm = {(w["mode"], w["level"]): w for w in report["warmup"]}
    assert {("sidecar", 4), ("floor", 4), ("sdk-pool", 4)} <= warm.keys()
    assert all(_number(w["seconds"]) for w in warm.values())
    assert len(report["runs"]) == len(DEFAULT_MODES) * 2


@pytest.mark.timeout(scaled(120))
def test_quick_bench_on_the_python_load_generator(tmp_path: Path) -> None:
    """--loadgen python drives the sidecar modes with the Python worker; no Go needed."""
    out = tmp_path / "bench.json"
    args = ("--quick", "--loadgen", "python", "--modes", "sidecar,sidecar-unary", "--levels", "4")
    done = _bench(*args, "--json", str(out), timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "building the Go load generator" not in done.stderr
    assert (
        "driven by the Python load generator (python -m cosyvoice_sidecar_bench.worker"
        in done.stdout
    )
    report = json.loads(out.read_text())
    assert report["settings"]["loadgen"] == "python"
    assert report["loadgen"]["name"] == "python"
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
def test_otlp_sink_receives_what_sidecar_b_exports(tmp_path: Path) -> None:
    """--otlp-sink: sidecar-b exports over OTLP/gRPC to the sink, whose counts reach the report."""
    out = tmp_path / "bench.json"
    args = ("--quick", "--loadgen", "python", "--modes", "sidecar,sidecar-b", "--levels", "4")
    done = _bench(*args, "--otlp-sink", "--json", str(out), timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["mode"]: r for r in report["rows"]}
    assert rows["sidecar-b"]["failures"] == []
    assert rows["sidecar-b"]["audio_ok"]
    sink = report["otlp_sink"]
    assert sink["exports"] >= 1
    assert sink["spans"] >= rows["sidecar-b"]["tasks"]  # every call of sidecar-b is traced
    assert sink["metric_points"] > 0
    assert f"which received {sink['spans']:,} spans" in done.stdout


def test_otlp_sink_without_sidecar_b_is_refused() -> None:
    """The sink only makes sense for the sidecar-b mode: say so, exit 2, start nothing."""
    done = _bench("--quick", "--modes", "floor", "--otlp-sink", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--otlp-sink exports from the sidecar-b mode" in done.stderr
    assert "starting the emulator" not in done.stderr

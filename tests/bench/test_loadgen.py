"""The Go load generator speaks the Python worker's protocol: same lines, same keys, same units.

Both load generators run the same spec (``WorkerSpec.to_json``, as the bench
writes it) against one real sidecar subprocess on its embedded emulator,
through the bench's own :class:`~cosyvoice_sidecar_bench.procs.Child`; their ``ready``
lines must be equal and their ``result`` lines must carry the same keys, in
the same order, with values of the same kind and units.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cosyvoice_sidecar_bench.loadgen import Loadgen, prepare
from cosyvoice_sidecar_bench.procs import Child, EmulatorClient
from cosyvoice_sidecar_bench.worker import WRITE_RACE, WorkerSpec
from cosyvoice_sidecar_bench.workload import DEFAULT_TEXT, Workload

from tests.processes import Process
from tests.timing import scaled

LEVEL = 4


@pytest.fixture(scope="module")
def go_loadgen(go: str, tmp_path_factory: pytest.TempPathFactory) -> Loadgen:
    """The Go load generator, built as the bench builds it."""
    loadgen = asyncio.run(prepare("go", tmp_path_factory.mktemp("loadgen")))
    assert loadgen.version.startswith("go1."), loadgen
    return loadgen


@dataclasses.dataclass
class Target:
    address: str
    workload: Workload


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """A sidecar on its embedded emulator, with a pool of LEVEL, and the workload for it."""
    args = ["serve", "--emulator", "--listen", "127.0.0.1:0"]
    args += ["--pool-min-idle", str(LEVEL), "--pool-max-size", str(LEVEL)]
    # Nobody reads its stderr: a line per request would fill the pipe and stall it.
    args += ["--log-level", "warning"]
    async with Process(*args, env={"DASHSCOPE_API_KEY": "sk-bench-local"}) as sidecar:
        emulator = (await sidecar.expect(r"^emulator on (\S+)$", 30)).group(1)
        address = (await sidecar.expect(r"^serving on (\S+)$", 30)).group(1)
        knobs = await EmulatorClient(emulator).knobs()
        yield Target(address, Workload.build(DEFAULT_TEXT, 2, 22050, knobs))
        assert await sidecar.stop(20) == 0


async def _run(
    loadgen: Loadgen, spec: WorkerSpec, log_dir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one load generator through the protocol; return its ready and result lines."""
    child = Child(
        f"{loadgen.name}-{spec.mode}",
        [*loadgen.args, spec.to_json()],
        log_dir=log_dir,
        stdin=True,
        program=loadgen.program,
    )
    await child.start()
    try:
        ready = await child.json_line("ready", timeout=scaled(30))
        await child.send("go\n")
        result = await child.json_line("result", timeout=scaled(60))
        assert await child.wait(scaled(30)) == 0, child.log_path.read_text()
    finally:
        await child.stop(5)
    return ready, result


def _kind(value: Any) -> str:
    """The JSON kind of a value, numbers as one kind (Go writes 2.0 as 2)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _check_result(result: dict[str, Any], expected_bytes: int) -> None:
    """What every result of this setup holds, whichever load generator wrote it."""
    tasks = result["tasks"]
    assert tasks >= LEVEL
    assert result["errors"] == 0, result["error_samples"]
    assert len(result["ttfb_ms"]) == tasks
    assert set(result["breakdown"]) == {"server_first_audio_ms", "client_started_ms"}
    assert all(len(v) == tasks for v in result["breakdown"].values())
    samples = [*result["ttfb_ms"], *result["gaps_ms"]]
    samples += [v for values in result["breakdown"].values() for v in values]
    assert all(_kind(v) == "number" and v >= 0 and round(v, 3) == v for v in samples)
    # Milliseconds, not seconds: a TTFB on the embedded emulator is a few ms at least.
    assert min(result["ttfb_ms"]) > 0.1
    # Each task's Started arrives before its first audio (the lists are in completion order).
    assert sum(result["breakdown"]["client_started_ms"]) <= sum(result["ttfb_ms"])
    assert 0 < result["elapsed_s"] < 30
    assert 0 < result["cpu_s"] < result["elapsed_s"] * 4
    assert 1 < result["peak_rss_mb"] < 1024  # MiB
    if result["audio_mismatches"]:
        got = f"audio bytes, expected {expected_bytes}"
        assert all(got in sample for sample in result["error_samples"])
        assert len(result["error_samples"]) == min(tasks, 5)
    else:
        assert result["error_samples"] == []


@pytest.mark.timeout(scaled(180))
@pytest.mark.parametrize(
    ("mode", "end"),
    [("grpc-stream", "half-close"), ("grpc-stream", "finish"), ("grpc-unary", "half-close")],
)
async def test_go_and_python_load_generators_report_alike(
    go_loadgen: Loadgen, target: Target, tmp_path: Path, mode: str, end: str
) -> None:
    """Same spec, same sidecar: equal ready lines, same result keys, kinds and units."""
    python_loadgen = await prepare("python", tmp_path)
    spec = WorkerSpec(mode, LEVEL, target.address, target.workload, 0.1, 0.5, scaled(15), end=end)
    py_ready, py_result = await _run(python_loadgen, spec, tmp_path)
    go_ready, go_result = await _run(go_loadgen, spec, tmp_path)

    assert go_ready == py_ready == {"event": "ready", "warmup_s": None, "warmup_sockets": 0}
    assert list(go_result) == list(py_result)
    assert {k: _kind(v) for k, v in go_result.items()} == {
        k: _kind(v) for k, v in py_result.items()
    }
    for result in (py_result, go_result):
        _check_result(result, target.workload.expected_bytes)
        assert result["audio_mismatches"] == 0

    # A wrong expected length counts every task as an audio mismatch, in the same words.
    expected = target.workload.expected_bytes + 2
    wrong = dataclasses.replace(
        spec, workload=dataclasses.replace(target.workload, expected_bytes=expected)
    )
    results = [(await _run(lg, wrong, tmp_path))[1] for lg in (python_loadgen, go_loadgen)]
    for result in results:
        _check_result(result, expected)
        assert result["audio_mismatches"] == result["tasks"]
    assert results[0]["error_samples"][0] == results[1]["error_samples"][0]


@pytest.mark.timeout(scaled(120))
async def test_alternate_ends_split_the_first_audio_by_kind(
    go_loadgen: Loadgen, target: Target, tmp_path: Path
) -> None:
    """end=alternate: half-close, then finish, and so on; max_tasks stops each worker."""
    python_loadgen = await prepare("python", tmp_path)
    spec = WorkerSpec(
        "grpc-stream",
        1,
        target.address,
        target.workload,
        0.0,
        60.0,
        scaled(15),
        end="alternate",
        max_tasks=4,
    )
    for loadgen in (python_loadgen, go_loadgen):
        _, result = await _run(loadgen, spec, tmp_path)
        assert (result["tasks"], result["errors"], result["error_kinds"]) == (4, 0, {})
        split = result["breakdown"]
        assert len(split["ttfb_half-close_ms"]) == len(split["ttfb_finish_ms"]) == 2, loadgen
        assert sorted(split["ttfb_half-close_ms"] + split["ttfb_finish_ms"]) == sorted(
            result["ttfb_ms"]
        )
        assert result["elapsed_s"] < 30  # the tasks ended the run, not the 60 s window


@pytest.mark.timeout(scaled(120))
async def test_refusals_are_counted_by_kind_and_retried_after_their_hint(
    go_loadgen: Loadgen, tmp_path: Path
) -> None:
    """A sidecar that admits one stream: the others' RESOURCE_EXHAUSTED is counted by reason,
    and with honor_retry each waits out the RetryInfo (0.5 s) before trying again."""
    args = ["serve", "--emulator", "--listen", "127.0.0.1:0", "--max-streams", "1"]
    args += ["--pool-min-idle", "1", "--pool-max-size", "1", "--log-level", "warning"]
    async with Process(*args, env={"DASHSCOPE_API_KEY": "sk-bench-local"}) as sidecar:
        emulator = (await sidecar.expect(r"^emulator on (\S+)$", 30)).group(1)
        address = (await sidecar.expect(r"^serving on (\S+)$", 30)).group(1)
        knobs = await EmulatorClient(emulator).knobs()
        workload = Workload.build(DEFAULT_TEXT, 2, 22050, knobs)
        spec = WorkerSpec(
            "grpc-stream", 3, address, workload, 0.0, 1.0, scaled(15), honor_retry=True
        )
        python_loadgen = await prepare("python", tmp_path)
        for loadgen in (python_loadgen, go_loadgen):
            _, result = await _run(loadgen, spec, tmp_path)
            refused = result["error_kinds"].get("RESOURCE_EXHAUSTED TooManyStreams", 0)
            assert refused >= 2, (loadgen.name, result["error_kinds"])
            kinds = {"RESOURCE_EXHAUSTED TooManyStreams"}
            if loadgen.name == "python":  # grpcio's asyncio client may lose the status
                kinds.add(f"INTERNAL {WRITE_RACE}")
            assert set(result["error_kinds"]) <= kinds, (loadgen.name, result["error_kinds"])
            # Each refused stream waits 0.5 s before its next try: in the 1 s window,
            # at most 3 tries of each of the 3 streams (without the wait: hundreds).
            assert refused <= 3 * 3, (loadgen.name, refused)
        assert await sidecar.stop(20) == 0

"""The README's first command: `make run` starts the sidecar on the emulator and synthesizes."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import wave
from pathlib import Path

from tests.timing import scaled

ROOT = Path(__file__).resolve().parent.parent


def _stat(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.exists() else None


async def test_run_demo_synthesizes_a_sample(tmp_path: Path) -> None:
    """scripts/run-demo.sh (what `make run` runs) serves, writes the sample and says so."""
    developers_sample = ROOT / "out" / "sample.wav"
    before = _stat(developers_sample)
    env = {
        **os.environ,
        "COSYVOICE_DEMO_EXIT": "1",
        "COSYVOICE_DEMO_OUT": str(tmp_path),
        "COSYVOICE_SIDECAR_LISTEN": "127.0.0.1:0",
    }
    process = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts" / "run-demo.sh"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), scaled(60))
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "sidecar serving on 127.0.0.1:" in text
    assert f"sample written to {tmp_path}/sample.wav" in text
    with wave.open(str(tmp_path / "sample.wav")) as sample:
        assert sample.getnframes() > 0
    # The test's run leaves a developer's own `make run` output alone.
    assert _stat(developers_sample) == before
    # The command it suggests next exists (make run installs no grpcurl).
    (hint,) = re.findall(r"^try: (.*?)(?:  \(.*\))?$", text, re.MULTILINE)
    program = ROOT / shlex.split(hint)[0]
    assert program.is_file(), hint
    assert os.access(program, os.X_OK), hint

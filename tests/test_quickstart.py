"""The README's first command: `make run` starts the sidecar on the emulator and synthesizes."""

from __future__ import annotations

import asyncio
import os
import wave
from pathlib import Path

from tests.timing import scaled

ROOT = Path(__file__).resolve().parent.parent


async def test_run_demo_synthesizes_a_sample() -> None:
    """scripts/run-demo.sh (what `make run` runs) serves, writes out/sample.wav and says so."""
    env = {
        **os.environ,
        "COSYVOICE_DEMO_EXIT": "1",
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
    assert "sample written to out/sample.wav" in text
    with wave.open(str(ROOT / "out" / "sample.wav")) as sample:
        assert sample.getnframes() > 0

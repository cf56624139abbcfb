"""The soak: 1,000 calls under a fault mix pass every invariant, and a broken one fails the run.

The run is real (the emulator and the sidecar as processes, every byte of
every call checked); what is asserted is the report's verdicts and the
figures behind them, never timings.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cosyvoice_sidecar_bench.soak import Call, Tally, Text, Verifier

from tests.processes import SIDECAR_BIN
from tests.timing import scaled


def _soak(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, no shell
        [sys.executable, "-m", "cosyvoice_sidecar_bench", "soak", *args],
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        check=False,
    )


@pytest.mark.timeout(scaled(180))
def test_a_thousand_calls_under_faults_keep_every_invariant(tmp_path: Path) -> None:
    """>= 5% faults and 5% caller cancels: every byte exact, no leak, a clean stop."""
    out = tmp_path / "soak.json"
    run = _soak("--calls", "1000", "--concurrency", "16", "--json", str(out), timeout=150)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    assert all(check["ok"] for check in report["invariants"]), report["invariants"]
    assert report["calls"] == 1000
    assert report["fault_share"] >= 0.05
    # Every kind of fault happened, and so did caller cancels mid-audio.
    reasons = report["error_reasons"]
    assert reasons["UNAVAILABLE InternalError"] > 0  # failed at start and mid-audio
    assert reasons["UNAVAILABLE UpstreamUnavailable"] > 0  # dropped mid-audio
    assert reasons["RESOURCE_EXHAUSTED Throttling.RateQuota"] > 0
    assert report["cancels"]["phases"].get("mid-audio", 0) > 0
    audio = report["audio"]
    assert audio["ok_byte_exact"] == report["ok"] > 0
    assert audio["cut_calls_prefix_ok"] == audio["cut_calls_with_audio"] > 0
    assert report["leaked_sockets"] == 0
    assert report["fds"]["leaked"] <= 0
    assert len(report["rss_mb"]["samples"]) >= 2
    assert "| invariant | result | figures |" in run.stdout


@pytest.mark.timeout(scaled(90))
def test_a_failed_invariant_fails_the_run(tmp_path: Path) -> None:
    """A run whose faults cannot reach the share asked for exits 1, naming the invariant."""
    run = _soak("--calls", "40", "--concurrency", "4", "--min-fault-share", "0.99", timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr[-3000:]
    assert "| faults >= 99% of calls | **FAILED** |" in run.stdout


def _text(audio: bytes) -> Text:
    return Text("Hello.", ("Hello.",), audio, hashlib.sha256(audio).hexdigest())


class _Records:
    """Stands in for the emulator's HTTP client: serves fixed task records."""

    def __init__(self, *records: dict[str, Any]) -> None:
        self.records = list(records)

    async def stats(self) -> dict[str, Any]:
        return {"tasks": self.records}


def _record(task_id: str, outcome: str, sent: bytes) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "outcome": outcome,
        "audio_bytes": len(sent),
        "audio_sha256": hashlib.sha256(sent).hexdigest(),
    }


async def test_the_checker_catches_audio_that_is_not_a_prefix() -> None:
    """A cut call whose bytes differ from what was sent is a mismatch, not a clean prefix."""
    text = _text(bytes(range(200)))
    good = Call(text, unary=False, cancel_after_s=None, task_id="t1", status="UNAVAILABLE")
    good.audio_bytes, good.prefix_ok = 50, True
    bad = Call(text, unary=False, cancel_after_s=None, task_id="t2", status="UNAVAILABLE")
    bad.audio_bytes, bad.prefix_ok = 50, False  # e.g. a chunk lost or reordered
    longer = Call(text, unary=False, cancel_after_s=None, task_id="t3", status="UNAVAILABLE")
    longer.audio_bytes, longer.prefix_ok = 120, True  # more than the emulator sent
    tally = Tally()
    records = _Records(
        _record("t1", "failed", text.audio[:100]),
        _record("t2", "failed", text.audio[:100]),
        _record("t3", "abandoned", text.audio[:100]),
    )
    verifier = Verifier(records, [text], tally)
    for call in (good, bad, longer):
        verifier.add(call)
    await verifier.check()
    assert verifier.pending == 0
    assert tally.prefix_checked == 3
    assert tally.prefix_ok == 1
    assert len(tally.mismatches) == 2


async def test_the_checker_catches_a_successful_call_with_other_bytes() -> None:
    """A call that ended OK must match the emulator's SHA-256 of a finished task exactly."""
    text = _text(bytes(range(100)))
    call = Call(text, unary=True, cancel_after_s=None, task_id="t1")
    call.audio_bytes, call.audio_sha256 = 100, text.sha256
    tally = Tally()
    other = bytes(reversed(text.audio))
    verifier = Verifier(_Records(_record("t1", "finished", other)), [text], tally)
    verifier.add(call)
    await verifier.check()
    assert tally.ok_checked == 1
    assert tally.ok_exact == 0
    assert tally.mismatches


def test_the_sidecar_command_runs_the_soak() -> None:
    """``cosyvoice-sidecar soak`` is the bench distribution's soak."""
    run = subprocess.run(  # noqa: S603 - the installed entry point, no shell
        [SIDECAR_BIN, "soak", "--help"],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "cosyvoice-sidecar soak" in run.stdout
    assert "--calls" in run.stdout

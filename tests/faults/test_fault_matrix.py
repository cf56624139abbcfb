"""The fault matrix: every way a call can go wrong, what its caller sees, and what is left after.

Each row is a fault, how it is injected, and the status the hurt callers
must see (code, ``ErrorInfo.reason``, whether a ``RetryInfo`` says to retry).
After every row the same four checks hold: the callers saw exactly that
status; the pool settles (nothing busy, opening or closing, and its idle
connections are exactly the sockets the upstream sees open; nothing still
runs upstream); the next call's audio is byte-exact against the upstream's
SHA-256; and no log record carries a traceback or is an ERROR (except the
one a refused key must log for its operator).
docs/reliability.md is the same table for people (a test keeps them equal).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import pytest

from sidecar.emulator import Emulator
from tests.conftest import StartSidecar
from tests.faults import scenarios as s
from tests.faults.lab import Lab, Scenario, Seen

C = grpc.StatusCode


@dataclass(frozen=True)
class Fault:
    """One row: the fault, how it is injected, what the caller sees, and the scenario doing it."""

    name: str
    injected: str
    sees: Seen
    scenario: Scenario


# fmt: off
MATRIX: Final = (
    # -- the upstream fails or misbehaves --------------------------------------------------
    Fault("task fails at start", "emulator fail_start_every=1 (InternalError)",
          Seen(C.UNAVAILABLE, "InternalError", retry=True), s.fails_at_start),
    Fault("task fails mid-audio", "emulator fail_mid_every=1: task-failed after the first frame",
          Seen(C.UNAVAILABLE, "InternalError", retry=True), s.fails_mid_audio),
    Fault("socket dropped mid-audio",
          "emulator drop_mid_every=1: TCP aborted after the first frame",
          Seen(C.UNAVAILABLE, "UpstreamUnavailable"), s.dropped_mid_audio),
    Fault("throttled, socket kept open",
          "emulator fail_start_every=1, Throttling.RateQuota, close_after_failure=False",
          Seen(C.RESOURCE_EXHAUSTED, "Throttling.RateQuota", retry=True),
          s.throttled_socket_kept_open),
    Fault("upstream SIGKILLed and restarted",
          "`cosyvoice-sidecar emulate` process killed -9 mid-audio, restarted on the same port",
          Seen(C.UNAVAILABLE, "UpstreamUnavailable"), s.upstream_sigkilled_and_restarted),
    Fault("key refused, then fixed by hot reload",
          "emulator accepts one key; DASHSCOPE_API_KEY_FILE holds another, then is rewritten",
          Seen(C.FAILED_PRECONDITION, "UpstreamAuthError"), s.refused_key_then_reloaded),
    Fault("upstream accepts TCP, never answers",
          "a TCP server on port 0 that reads and never writes; later forwards to the emulator",
          Seen(C.UNAVAILABLE, "UpstreamUnavailable"), s.accepts_tcp_never_answers),
    Fault("silent after the handshake", "emulator start_delay_s = 3 x --start-timeout",
          Seen(C.UNAVAILABLE, "UpstreamTimeout"), s.silent_before_task_started),
    Fault("silent after task-started", "emulator first_packet_delay_s=3600",
          Seen(C.UNAVAILABLE, "UpstreamTimeout"), s.silent_after_task_started),
    Fault("upstream slowed to a crawl", "emulator realtime_factor=20: a 100 ms frame every 2 s",
          Seen(C.UNAVAILABLE, "UpstreamTimeout"), s.crawling_upstream),
    # -- the caller hangs up, runs out of time, or goes quiet -------------------------------
    Fault("cancel while waiting for a connection", "pool of 1 busy; the queued caller cancels",
          Seen(C.CANCELLED), s.cancel_waiting_for_a_connection),
    Fault("cancel before task-started", "emulator start_delay_s; cancel once run-task arrived",
          Seen(C.CANCELLED), s.cancel_before_task_started),
    Fault("cancel after task-started, before audio", "emulator first_packet_delay_s=3600",
          Seen(C.CANCELLED), s.cancel_after_started_before_audio),
    Fault("cancel mid-audio, input still open", "text + flush, cancel at the first audio",
          Seen(C.CANCELLED), s.cancel_mid_audio_input_open),
    Fault("cancel mid-audio, after finish", "text + finish, cancel at the first audio",
          Seen(C.CANCELLED), s.cancel_mid_audio_after_finish),
    Fault("cancel after the call completed", "cancel() once every response was read",
          Seen(C.OK), s.cancel_after_completed),
    Fault("deadline mid-audio", "real-time audio, 0.5 s call deadline",
          Seen(C.DEADLINE_EXCEEDED), s.deadline_mid_audio),
    Fault("idle caller: nothing sent", "stream opened, no config (--caller-idle-timeout)",
          Seen(C.FAILED_PRECONDITION, "CallerIdle"), s.idle_caller_sends_nothing),
    Fault("idle caller: text, no finish", "half a sentence, then silence (--caller-idle-timeout)",
          Seen(C.FAILED_PRECONDITION, "CallerIdle"), s.idle_caller_after_text),
    Fault("paused reader", "28 MB of audio, the caller stops reading (--caller-read-timeout)",
          Seen(C.FAILED_PRECONDITION, "CallerStalled"), s.paused_reader),
    Fault("1,000 rapid connect/disconnects",
          "a channel per call, cancelled at once: before sending, after config, after text, "
          "after the task started",
          Seen(C.CANCELLED), s.thousand_connect_disconnects),
    # -- too much load --------------------------------------------------------------------
    Fault("overload beyond --max-streams", "--max-streams 1, a second call",
          Seen(C.RESOURCE_EXHAUSTED, "TooManyStreams", retry=True), s.over_max_streams),
    Fault("overload beyond the pool size", "--pool-max-size 1 busy past --acquire-timeout",
          Seen(C.RESOURCE_EXHAUSTED, "PoolExhausted", retry=True), s.over_pool_size),
    # -- the sidecar process is told to stop (a subprocess, 4 calls in flight) ----------------
    Fault("SIGTERM, calls in flight", "SIGTERM, --drain-grace longer than the calls",
          Seen(C.OK), s.sigterm_drains),
    Fault("SIGINT, calls in flight", "SIGINT, --drain-grace longer than the calls",
          Seen(C.OK), s.sigint_drains),
    Fault("SIGTERM past the drain grace", "SIGTERM, --drain-grace shorter than the calls",
          Seen(C.UNAVAILABLE, "PoolClosed"), s.sigterm_past_the_grace),
    Fault("second SIGTERM", "SIGTERM, then another 0.5 s later; --drain-grace 60 s",
          Seen(C.UNAVAILABLE, "PoolClosed"), s.second_sigterm),
)
# fmt: on


def _id(fault: Fault) -> str:
    return re.sub(r"[^a-z0-9]+", "-", fault.name.lower()).strip("-")


@pytest.fixture
async def lab(
    emulator: Emulator,
    start_sidecar: StartSidecar,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Lab]:
    caplog.set_level(logging.INFO)
    row = Lab(emulator, start_sidecar, tmp_path, caplog)
    try:
        yield row
    finally:
        await row.aclose()


@pytest.mark.parametrize("fault", MATRIX, ids=[_id(f) for f in MATRIX])
async def test_fault(fault: Fault, lab: Lab) -> None:
    """The row's callers see its status; the pool and upstream settle; the next call is exact."""
    seen = await fault.scenario(lab)
    assert seen, "the scenario hurt no caller"
    wrong = [str(s) for s in seen if s != fault.sees]
    assert not wrong, f"expected {fault.sees}, {len(wrong)} of {len(seen)} saw: {wrong[:5]}"
    await lab.settled()
    await lab.next_call_is_exact()
    assert not lab.unexpected_errors(), lab.unexpected_errors()


DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def test_the_docs_show_the_same_matrix() -> None:
    """docs/reliability.md has one row per fault, in order, naming the status the test expects."""
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \| ([^|]+?) \|", DOC.read_text(), re.MULTILINE)
    documented = [(name, sees) for number, name, sees in rows if number.isdigit()]
    expected = [(f.name, _doc_status(f.sees)) for f in MATRIX]
    assert documented == expected


def _doc_status(seen: Seen) -> str:
    """How docs/reliability.md writes a status: `CODE` reason (+ RetryInfo)."""
    text = f"`{seen.code.name}`"
    if seen.reason:
        text += f" {seen.reason}"
    if seen.retry:
        text += " + RetryInfo"
    return text

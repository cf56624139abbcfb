"""``cosyvoice-sidecar soak``: thousands of calls through a sidecar process, faults injected,
every audio byte checked, leaks and memory measured.

The emulator and the sidecar run as their own processes (:mod:`.procs`); this
process is the callers: ``--calls`` calls, ``--concurrency`` at a time, a mix
of ``StreamingSynthesize`` (text in fragments) and ``Synthesize``, some cancelled
by their caller at a random moment. The emulator injects a fault mix by its
knobs: a task failing at start, one failing after its first frame, a TCP
connection dropped after its first frame (each every Nth task, periods
coprime so they never coincide), and ``Throttling.RateQuota`` beyond a number
of running tasks.

Every call is checked against the emulator's record of its task (its
``audio_sha256`` and ``audio_bytes``; the emulator keeps the last 1,000
records, so they are fetched as the run goes) and against the deterministic
audio of its text (:func:`sidecar.emulator.task_audio`): a successful call's
audio must be exactly the task's, a failed or cancelled call's a prefix of
what the emulator sent. At the end, once the sidecar has settled: its pool's
sockets against the emulator's open ones, its open file descriptors against
the start (net of the pool's sockets), and its RSS over the run.

The report is Markdown on stdout (``--json`` for everything, ``--plot`` for a
PNG of RSS over time); the exit code is 1 when an invariant fails, 2 for bad
flags.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
from cosyvoice.sidecar.v1 import status_pb2, status_pb2_grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cosyvoice_sidecar_bench.procs import Child, ChildError, EmulatorClient
from cosyvoice_sidecar_bench.worker import WRITE_RACE, WRITE_RACE_DETAILS
from cosyvoice_sidecar_bench.workload import split_fragments
from sidecar.emulator.audio import AudioSpec, task_audio
from sidecar.emulator.knobs import EmulatorKnobs
from sidecar.emulator.sentences import SentenceSplitter

__all__ = [
    "Call",
    "Records",
    "SoakSettings",
    "Tally",
    "Text",
    "Verifier",
    "add_arguments",
    "main",
    "markdown",
    "run_soak",
]

# Texts of several lengths and scripts; each call speaks one, in 1 to 3 fragments.
TEXTS: Final = (
    "Warm sockets make the first packet fast.",
    "A soak run checks every byte. It also watches memory, sockets and files.",
    "Short one.",
    "你好，世界。这是一次长时间的测试。",  # noqa: RUF001 - full-width punctuation on purpose
    "Numbers like 42 and 3.14 are read aloud; so are dates, like 2026-12-01!",
    "Faults come and go, and the next call must still be exact.",
)
SAMPLE_RATE: Final = 16000
API_KEY: Final = "sk-soak-local"  # the emulator accepts any key; never a real one
# Emulator records fetched once this many calls wait for theirs (it keeps 1,000).
_VERIFY_BATCH: Final = 200
# Statuses a caller may see in this run: anything else is a bug.
_EXPECTED_CODES: Final = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
# grpcio's write race (see worker.WRITE_RACE): the sidecar's own access lines say
# what it answered.
# Throttling comes in episodes, as a quota running out does: at the start of
# every period, for throttle_share of it, every run-task is refused.
_THROTTLE_PERIOD_S: Final = 2.0


@dataclass(frozen=True)
class SoakSettings:
    """One soak run; see ``cosyvoice-sidecar soak --help`` for each field."""

    calls: int = 10_000
    concurrency: int = 16
    fail_start_every: int = 41
    fail_mid_every: int = 43
    drop_mid_every: int = 47
    throttle_share: float = 0.02
    cancel_share: float = 0.05
    honor_retry_info: bool = True
    unary_share: float = 0.25
    realtime_factor: float = 0.05
    min_fault_share: float = 0.05
    max_rss_growth_pct: float | None = None
    rss_interval_s: float = 0.5
    seed: int = 1
    log_dir: Path | None = None
    sidecar_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.calls < 1 or self.concurrency < 1:
            raise ValueError("--calls and --concurrency must be >= 1")
        if not all(0 <= v <= 1 for v in (self.cancel_share, self.unary_share)):
            raise ValueError("--cancel-share and --unary-share must be between 0 and 1")
        if not 0 <= self.throttle_share < 1:
            raise ValueError("--throttle-share must be in [0, 1)")
        if min(self.fail_start_every, self.fail_mid_every, self.drop_mid_every) < 0:
            raise ValueError("the --*-every periods must be >= 0 (0 turns one off)")
        if self.rss_interval_s <= 0:
            raise ValueError("--rss-interval must be > 0")


@dataclass(frozen=True)
class Text:
    """One of the texts, with its fragments and every audio byte the emulator sends for it."""

    text: str
    fragments: tuple[str, ...]
    audio: bytes
    sha256: str


def _texts(knobs: EmulatorKnobs) -> list[Text]:
    result: list[Text] = []
    spec = AudioSpec("pcm", SAMPLE_RATE)
    for text in TEXTS:
        fragments = tuple(split_fragments(text, 1 + len(result) % 3))
        sentences = _sentences((text,))
        if _sentences(fragments) != sentences:
            raise ValueError(f"the fragments of {text!r} change its sentence split")
        audio = task_audio(sentences, spec, knobs.ms_per_character)
        result.append(Text(text, fragments, audio, hashlib.sha256(audio).hexdigest()))
    return result


def _sentences(fragments: Sequence[str]) -> list[str]:
    """The sentences the emulator makes of text arriving in these fragments."""
    splitter = SentenceSplitter()
    found = [s.text for fragment in fragments for s in splitter.feed(fragment)]
    return found + [s.text for s in splitter.flush()]


@dataclass
class Call:
    """One call of the run: what it was asked to do, and what its caller got."""

    text: Text
    unary: bool
    cancel_after_s: float | None
    task_id: str = ""
    status: str = "OK"  # the gRPC code name, or "cancelled" for the caller's own cancel
    reason: str = ""  # ErrorInfo.reason
    details: str = ""  # the status message of an error
    retry_after_s: float | None = None  # what its RetryInfo asked for
    phase: str = ""  # where a cancel hit: before-started, after-started, mid-audio
    audio_bytes: int = 0
    audio_sha256: str = ""
    prefix_ok: bool = True  # the audio is a prefix of the text's deterministic audio
    upstream: str = ""  # the emulator's outcome of its task, once verified

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclass
class Tally:
    """Everything counted while the run goes; the report is built from it."""

    calls: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # "CODE ErrorInfo.reason" of errors
    cancel_phases: Counter[str] = field(default_factory=Counter)
    cancel_upstream: Counter[str] = field(default_factory=Counter)
    audio_bytes: int = 0
    ok_exact: int = 0
    ok_checked: int = 0
    prefix_ok: int = 0
    prefix_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # statuses no fault explains


class Records(Protocol):
    """Where the emulator's task records come from (its HTTP stats, in a run)."""

    async def stats(self) -> dict[str, Any]: ...


class Verifier:
    """Matches finished calls with the emulator's records of their tasks, in batches."""

    def __init__(self, emulator: Records, texts: list[Text], tally: Tally) -> None:
        self._emulator = emulator
        self._tally = tally
        self._pending: dict[str, Call] = {}
        self._prefix_sha: dict[tuple[str, int], str] = {}
        self._texts = {t.text: t for t in texts}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, call: Call) -> None:
        tally = self._tally
        if call.ok:
            tally.ok_checked += 1
            exact = call.audio_sha256 == call.text.sha256 and call.prefix_ok
            if not exact:
                self._mismatch(call, "audio is not the text's audio")
        elif call.audio_bytes:
            tally.prefix_checked += 1
            if not call.prefix_ok:
                self._mismatch(call, "audio is not a prefix of the text's audio")
        if call.task_id:
            self._pending[call.task_id] = call
        elif call.ok:
            self._mismatch(call, "a successful call without a task id")
        elif call.audio_bytes == 0:
            call.upstream = "-"  # never started upstream, nothing to compare

    async def check(self) -> None:
        """Fetch the emulator's records and settle every pending call that has a final one."""
        stats = await self._emulator.stats()
        for record in stats["tasks"]:
            call = self._pending.get(record["task_id"])
            if call is None or record["outcome"] == "running":
                continue
            del self._pending[record["task_id"]]
            self._verify(call, record)

    def unverified(self) -> list[Call]:
        return list(self._pending.values())

    def _verify(self, call: Call, record: dict[str, Any]) -> None:
        tally = self._tally
        call.upstream = record["outcome"]
        if call.status == "cancelled":
            tally.cancel_upstream[record["outcome"]] += 1
        sent = int(record["audio_bytes"])
        if call.ok:
            # Exact twice over: the emulator's record of what it sent, and the
            # text's deterministic audio.
            matches = (sent, record["audio_sha256"]) == (call.audio_bytes, call.audio_sha256)
            if (
                record["outcome"] == "finished"
                and matches
                and call.text.sha256 == call.audio_sha256
            ):
                tally.ok_exact += 1
            else:
                self._mismatch(call, f"the emulator's record differs: {record}")
            return
        # What the emulator sent is the deterministic audio's first `sent` bytes,
        # and the caller's audio is no longer than that: a clean prefix of it.
        if sent > len(call.text.audio) or record["audio_sha256"] != self._sha(call.text, sent):
            self._mismatch(call, f"the emulator sent other audio than expected: {record}")
        elif call.audio_bytes > sent:
            self._mismatch(call, f"the caller got {call.audio_bytes} bytes, {sent} were sent")
        elif call.audio_bytes and call.prefix_ok:
            tally.prefix_ok += 1

    def _sha(self, text: Text, size: int) -> str:
        key = (text.text, size)
        if key not in self._prefix_sha:
            self._prefix_sha[key] = hashlib.sha256(text.audio[:size]).hexdigest()
        return self._prefix_sha[key]

    def _mismatch(self, call: Call, what: str) -> None:
        if len(self._tally.mismatches) < 20:
            self._tally.mismatches.append(f"task {call.task_id or '-'} ({call.status}): {what}")
        else:
            self._tally.mismatches.append("...")


async def _requests(text: Text) -> AsyncIterator[pb.StreamingSynthesizeRequest]:
    config = pb.SynthesisConfig(format=pb.AUDIO_FORMAT_PCM, sample_rate_hz=SAMPLE_RATE)
    yield pb.StreamingSynthesizeRequest(config=config)
    for fragment in text.fragments:
        yield pb.StreamingSynthesizeRequest(text=fragment)
    yield pb.StreamingSynthesizeRequest(finish=pb.Finish())


async def _run_call(stub: pb_grpc.SynthesizerStub, call: Call) -> None:
    """Make one call, cancel it when its time comes, and record what came back."""
    config = pb.SynthesisConfig(format=pb.AUDIO_FORMAT_PCM, sample_rate_hz=SAMPLE_RATE)
    rpc: Any
    if call.unary:
        request = pb.SynthesizeRequest(text=call.text.text, config=config)
        rpc = stub.Synthesize(request, timeout=60)
    else:
        # grpc.aio takes an async iterator of requests; the stubs name only sync ones.
        rpc = stub.StreamingSynthesize(_requests(call.text), timeout=60)  # type: ignore[arg-type]
    cancelled = False

    def cancel() -> None:
        nonlocal cancelled
        cancelled = rpc.cancel()

    loop = asyncio.get_running_loop()
    timer = None if call.cancel_after_s is None else loop.call_later(call.cancel_after_s, cancel)
    audio = bytearray()
    try:
        async for response in rpc:
            if response.HasField("started"):
                call.task_id = response.started.task_id
            elif response.HasField("audio"):
                audio += response.audio.data
    except grpc.aio.AioRpcError as exc:
        if cancelled and exc.code() is grpc.StatusCode.CANCELLED:
            call.status = "cancelled"  # our own cancel, reported as a status (1 in ~30,000)
            call.phase = _phase(call, audio)
        else:
            call.status, call.reason, call.retry_after_s = exc.code().name, *_details(exc)
            call.details = (exc.details() or "")[:200]
            if call.status == "INTERNAL" and not call.reason and call.details == WRITE_RACE_DETAILS:
                call.reason = WRITE_RACE
    except asyncio.CancelledError:
        if not cancelled:
            raise
        call.status = "cancelled"
        call.phase = _phase(call, audio)
    finally:
        if timer is not None:
            timer.cancel()
    _done(call, audio)


def _phase(call: Call, audio: bytearray) -> str:
    """Where the caller's cancel hit its call."""
    return "mid-audio" if audio else "after-started" if call.task_id else "before-started"


def _done(call: Call, audio: bytearray) -> None:
    call.audio_bytes = len(audio)
    call.audio_sha256 = hashlib.sha256(audio).hexdigest()
    call.prefix_ok = call.text.audio.startswith(audio)


def _details(error: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """ErrorInfo's reason and RetryInfo's delay (seconds) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, retry = "", None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        delay = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(delay):
            retry = delay.retry_delay.ToTimedelta().total_seconds()
    return reason, retry


async def _throttle_episodes(emulator: EmulatorClient, share: float) -> None:
    """Refuse every run-task for ``share`` of each period (max_concurrent_tasks=0)."""
    episode = share * _THROTTLE_PERIOD_S
    while True:
        await emulator.update_knobs(max_concurrent_tasks="0")
        await asyncio.sleep(episode)
        await emulator.update_knobs(max_concurrent_tasks="none")
        await asyncio.sleep(_THROTTLE_PERIOD_S - episode)


def _fd_census(pid: int, upstream_port: int) -> Counter[str]:
    """The process's open fds by kind; its TCP sockets to the upstream port apart.

    Sockets are told apart through the kernel's own table (``/proc/<pid>/net/tcp``):
    a socket whose remote port is the upstream's is an upstream connection,
    whatever the pool believes.
    """
    remote_ports: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_ports[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)  # inode: port
    census: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            port = remote_ports.get(target[8:-1])
            kind = "upstream socket" if port == upstream_port else "other socket"
        else:
            kind = re.sub(r"\[\d+\]$", "", target)  # pipe:[123] -> pipe:
        census[kind] += 1
    return census


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


async def _sample_rss(
    pid: int, interval: float, samples: list[tuple[float, float, int]], tally: Tally
) -> None:
    started = time.monotonic()
    while True:
        rss = await asyncio.to_thread(_rss_mb, pid)
        samples.append((round(time.monotonic() - started, 2), round(rss, 2), tally.calls))
        await asyncio.sleep(interval)


def _plan(settings: SoakSettings, texts: list[Text]) -> list[Call]:
    """Every call of the run, decided up front from the seed (so a run can be repeated)."""
    rng = random.Random(settings.seed)  # noqa: S311 - a test schedule, not cryptography
    knobs = EmulatorKnobs()
    calls = []
    for i in range(settings.calls):
        text = texts[i % len(texts)]
        duration = len(text.audio) / 2 / SAMPLE_RATE * settings.realtime_factor
        cancel = None
        if rng.random() < settings.cancel_share:
            cancel = rng.uniform(0, 1.2 * duration + knobs.first_packet_delay_s)
        calls.append(Call(text, rng.random() < settings.unary_share, cancel))
    return calls


def _emulator_args(s: SoakSettings) -> list[str]:
    return [
        "-m",
        "sidecar",
        "emulate",
        "--port",
        "0",
        "--realtime-factor",
        str(s.realtime_factor),
        "--fail-start-every",
        str(s.fail_start_every),
        "--fail-mid-every",
        str(s.fail_mid_every),
        "--drop-mid-every",
        str(s.drop_mid_every),
        "--fail-code",
        "InternalError",
        # A transient server error (the default InternalError message is the
        # one DashScope sends for a voice that does not exist).
        "--fail-message",
        "Internal server error.",
    ]


def _sidecar_args(s: SoakSettings, upstream: str) -> list[str]:
    return [
        "-m",
        "sidecar",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        upstream,
        "--pool-min-idle",
        str(max(2, s.concurrency // 4)),
        "--pool-max-size",
        str(s.concurrency),
        "--max-streams",
        str(2 * s.concurrency),
        "--default-sample-rate",
        str(SAMPLE_RATE),
        *s.sidecar_args,
    ]


async def _settle(
    channel: grpc.aio.Channel, emulator: EmulatorClient, timeout: float
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Wait until the pool is quiet and agrees with the emulator; return both views."""
    stub = status_pb2_grpc.SidecarStatusStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        response = await stub.GetStatus(status_pb2.GetStatusRequest(), timeout=10)
        pool = response.pool
        stats = await emulator.stats()
        settled = (
            pool.busy == pool.opening == pool.closing == 0
            and stats["connections_open"] == pool.idle
            and stats["running_tasks"] == 0
        )
        view = {
            "idle": pool.idle,
            "busy": pool.busy,
            "opening": pool.opening,
            "closing": pool.closing,
            "opened_total": pool.opened_total,
            "closed_total": dict(pool.closed_total),
            "stale_retries": pool.stale_retries,
        }
        if settled or time.monotonic() > deadline:
            return view, stats, settled
        await asyncio.sleep(0.2)


async def run_soak(settings: SoakSettings, console: Console) -> dict[str, Any]:
    """Run the soak as ``settings`` say; return the report (JSON-ready)."""
    log_dir = settings.log_dir or Path(tempfile.mkdtemp(prefix="cosyvoice-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    texts = _texts(EmulatorKnobs())
    calls = _plan(settings, texts)
    tally = Tally()
    emulator_child = Child("emulator", _emulator_args(settings), log_dir=log_dir)
    sidecar: Child | None = None
    try:
        await emulator_child.start()
        url = (await emulator_child.expect(r"^emulator on (ws://\S+)$", timeout=30)).group(1)
        emulator = EmulatorClient(url)
        sidecar = Child(
            "sidecar",
            _sidecar_args(settings, url),
            log_dir=log_dir,
            env={"DASHSCOPE_API_KEY": API_KEY},
        )
        await sidecar.start()
        address = (await sidecar.expect(r"^serving on (\S+)$", timeout=60)).group(1)
        report = await _drive(settings, calls, texts, tally, sidecar, emulator, address, console)
    finally:
        exit_code = await sidecar.stop() if sidecar is not None else None
        await emulator_child.stop()
    log = sidecar.log_path.read_text(errors="replace") if sidecar is not None else ""
    report["sidecar_exit"] = exit_code
    report["sidecar_codes"] = dict(sorted(Counter(re.findall(r"grpc_code=([A-Z_]+)", log)).items()))
    report["sidecar_log_errors"] = [
        line for line in log.splitlines() if " ERROR " in line or "Traceback" in line
    ][:20]
    report["logs"] = str(log_dir)
    report["invariants"] = _invariants(settings, report)
    report["passed"] = all(i["ok"] for i in report["invariants"])
    return report


async def _drive(
    settings: SoakSettings,
    calls: list[Call],
    texts: list[Text],
    tally: Tally,
    sidecar: Child,
    emulator: EmulatorClient,
    address: str,
    console: Console,
) -> dict[str, Any]:
    pid = sidecar.pid
    verifier = Verifier(emulator, texts, tally)
    samples: list[tuple[float, float, int]] = []
    upstream_port = int(emulator.ws_url.split(":")[2].split("/")[0])
    fds_ready = sum((await asyncio.to_thread(_fd_census, pid, upstream_port)).values())
    warm_mark = min(len(calls), settings.concurrency)
    start: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SynthesizerStub(channel)
        sampler = asyncio.create_task(_sample_rss(pid, settings.rss_interval_s, samples, tally))
        queue = iter(calls)
        started = time.monotonic()
        progress = Progress(
            TextColumn("soak"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[summary]}"),
            TimeRemainingColumn(),
            console=console,
        )

        async def lane() -> None:
            for call in queue:
                await _run_call(stub, call)
                tally.calls += 1
                tally.statuses[call.status] += 1
                tally.audio_bytes += call.audio_bytes
                if call.status == "cancelled":
                    tally.cancel_phases[call.phase] += 1
                elif not call.ok:
                    tally.reasons[f"{call.status} {call.reason or '-'}"] += 1
                    if call.status not in _EXPECTED_CODES and call.reason != WRITE_RACE:
                        tally.unexpected.append(f"{call.status}: {call.details}")
                verifier.add(call)
                if tally.calls == warm_mark:  # the start, once the code paths are warm
                    start.update(await _snapshot(pid, upstream_port))
                if verifier.pending >= _VERIFY_BATCH:
                    await verifier.check()
                progress.update(bar, advance=1, summary=_summary(tally))
                if call.retry_after_s and settings.honor_retry_info:
                    await asyncio.sleep(call.retry_after_s)  # as a well-behaved caller does

        throttling = (
            asyncio.create_task(_throttle_episodes(emulator, settings.throttle_share))
            if settings.throttle_share
            else None
        )
        with progress:
            bar = progress.add_task("calls", total=len(calls), summary="")
            await asyncio.gather(*(lane() for _ in range(settings.concurrency)))
        elapsed = time.monotonic() - started
        if throttling is not None:
            throttling.cancel()
            await asyncio.gather(throttling, return_exceptions=True)
            await emulator.update_knobs(max_concurrent_tasks="none")
        pool, stats, settled = await _settle(channel, emulator, timeout=30)
        for _ in range(10):  # the last records: every task has ended once settled
            await verifier.check()
            if not verifier.pending:
                break
            await asyncio.sleep(0.5)
        end = await _snapshot(pid, upstream_port)
        sampler.cancel()
    return _report(
        settings, tally, verifier, samples, fds_ready, start, end, pool, stats, settled, elapsed
    )


async def _snapshot(pid: int, upstream_port: int) -> dict[str, Any]:
    """The sidecar's open fds by kind, and its RSS."""
    census = await asyncio.to_thread(_fd_census, pid, upstream_port)
    return {
        "fds": sum(census.values()),
        "upstream_sockets": census["upstream socket"],
        "fd_kinds": dict(sorted(census.items())),
        "rss_mb": round(await asyncio.to_thread(_rss_mb, pid), 2),
    }


def _summary(tally: Tally) -> str:
    errors = tally.calls - tally.statuses["OK"] - tally.statuses["cancelled"]
    return f"ok {tally.statuses['OK']} · errors {errors} · cancels {tally.statuses['cancelled']}"


def _report(
    settings: SoakSettings,
    tally: Tally,
    verifier: Verifier,
    samples: list[tuple[float, float, int]],
    fds_ready: int,
    start: dict[str, Any],
    end: dict[str, Any],
    pool: dict[str, Any],
    stats: dict[str, Any],
    settled: bool,
    elapsed: float,
) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    for status, count in tally.statuses.items():
        if status not in ("OK", "cancelled"):
            errors[status] += count
    outcomes = dict(stats["outcomes"])
    abandoned = int(outcomes.get("abandoned", 0))
    drops = int(stats["connections_dropped"])
    fault_calls = sum(errors.values())
    # Upstream sockets come and go with the pool's size (and are checked on
    # their own): a leak is any other fd more at the end than at the start.
    fds_leaked = (end["fds"] - end["upstream_sockets"]) - (start["fds"] - start["upstream_sockets"])
    kinds = set(start["fd_kinds"]) | set(end["fd_kinds"])
    fd_changes = {
        k: end["fd_kinds"].get(k, 0) - start["fd_kinds"].get(k, 0)
        for k in sorted(kinds)
        if end["fd_kinds"].get(k, 0) != start["fd_kinds"].get(k, 0)
    }
    rss_start = start["rss_mb"]
    # Allocator arenas and caches fill during the first calls; a leak shows as
    # growth after that: from the first sample past a fifth of the calls.
    steady = next((rss for _, rss, done in samples if done >= tally.calls / 5), end["rss_mb"])
    return {
        "settings": _settings_dict(settings),
        "calls": tally.calls,
        "ok": tally.statuses["OK"],
        "errors": dict(sorted(errors.items())),
        "error_reasons": dict(sorted(tally.reasons.items())),
        "unexpected_statuses": tally.unexpected[:20]
        + (["..."] if len(tally.unexpected) > 20 else []),
        "fault_share": round(fault_calls / max(tally.calls, 1), 4),
        "duration_s": round(elapsed, 1),
        "calls_per_s": round(tally.calls / elapsed, 1) if elapsed else 0.0,
        "audio_bytes": tally.audio_bytes,
        "audio": {
            "ok_calls": tally.ok_checked,
            "ok_byte_exact": tally.ok_exact,
            "cut_calls_with_audio": tally.prefix_checked,
            "cut_calls_prefix_ok": tally.prefix_ok,
            "unverified": len(verifier.unverified()),
            "mismatches": tally.mismatches,
        },
        "cancels": {
            "caller_cancels": tally.statuses["cancelled"],
            "phases": dict(sorted(tally.cancel_phases.items())),
            "their_upstream_tasks": dict(sorted(tally.cancel_upstream.items())),
            "upstream_abandoned": abandoned,
            "upstream_dropped_by_emulator": drops,
        },
        "upstream": {
            "tasks": int(stats["tasks_started"]),
            "outcomes": outcomes,
            "connections_opened": int(stats["connections_opened"]),
            "connections_open": int(stats["connections_open"]),
            "running_tasks": int(stats["running_tasks"]),
        },
        "pool": pool,
        "settled": settled,
        "leaked_sockets": int(stats["connections_open"]) - int(pool["idle"]),
        "fds": {
            "ready": fds_ready,
            "start": start["fds"],
            "end": end["fds"],
            "upstream_sockets": [start["upstream_sockets"], end["upstream_sockets"]],
            "changes": fd_changes,
            "leaked": fds_leaked,
        },
        "rss_mb": {
            "start": rss_start,
            "steady": steady,
            "end": end["rss_mb"],
            "peak": max((s[1] for s in samples), default=0.0),
            "growth_pct": _growth(rss_start, end["rss_mb"]),
            "steady_growth_pct": _growth(steady, end["rss_mb"]),
            "samples": samples,
        },
    }


def _growth(before: float, after: float) -> float:
    return round(100 * (after - before) / before, 1) if before else 0.0


def _settings_dict(settings: SoakSettings) -> dict[str, Any]:
    values = dataclasses.asdict(settings)
    values["log_dir"] = str(settings.log_dir) if settings.log_dir else None
    return values


def _invariants(settings: SoakSettings, r: dict[str, Any]) -> list[dict[str, Any]]:
    """What must hold for the run to pass, each with the figures that decide it."""
    audio, cancels = r["audio"], r["cancels"]
    beyond_drops = cancels["upstream_abandoned"] - cancels["upstream_dropped_by_emulator"]
    unexpected = r["unexpected_statuses"]
    sidecar_codes = sorted(set(r["sidecar_codes"]) - _EXPECTED_CODES - {"OK", "CANCELLED"})
    checks = [
        (
            "every successful call byte-exact",
            r["ok"] > 0 and audio["ok_byte_exact"] == audio["ok_calls"] == r["ok"],
            f"{audio['ok_byte_exact']} of {r['ok']}",
        ),
        (
            "every cut call's audio a prefix of what the upstream sent",
            audio["cut_calls_prefix_ok"] == audio["cut_calls_with_audio"]
            and not audio["mismatches"],
            f"{audio['cut_calls_prefix_ok']} of {audio['cut_calls_with_audio']}",
        ),
        (
            "every call matched with the upstream's record",
            audio["unverified"] == 0,
            f"{audio['unverified']} unverified",
        ),
        (
            "callers saw no status but the faults' (UNAVAILABLE, RESOURCE_EXHAUSTED)",
            not unexpected,
            f"{len(unexpected)} other" + (f": {unexpected[0]}" if unexpected else ""),
        ),
        (
            "the sidecar answered nothing but OK, CANCELLED and the faults' statuses",
            not sidecar_codes and sum(r["sidecar_codes"].values()) >= r["calls"] * 0.99,
            f"access lines: {_pairs(r['sidecar_codes'])}",
        ),
        (
            f"faults >= {settings.min_fault_share:.0%} of calls",
            r["fault_share"] >= settings.min_fault_share,
            f"{r['fault_share']:.1%}",
        ),
        (
            "no leaked upstream socket",
            r["settled"]
            and r["leaked_sockets"] == 0
            and r["fds"]["upstream_sockets"][1] == r["pool"]["idle"],
            f"pool idle {r['pool']['idle']}, upstream open {r['upstream']['connections_open']}, "
            f"sidecar's kernel sockets to it {r['fds']['upstream_sockets'][1]}",
        ),
        (
            "nothing left running upstream",
            r["upstream"]["running_tasks"] == 0,
            f"{r['upstream']['running_tasks']} running",
        ),
        (
            "no leaked file descriptor",
            r["fds"]["leaked"] <= 0,
            f"{r['fds']['leaked']:+d} (net of upstream sockets; changes: "
            f"{_pairs(r['fds']['changes'])})",
        ),
        (
            "every task abandoned upstream was dropped or cancelled by its caller",
            0 <= beyond_drops <= cancels["caller_cancels"],
            f"{beyond_drops} beyond drops, {cancels['caller_cancels']} caller cancels",
        ),
        (
            "the sidecar stopped cleanly (exit 0, no ERROR, no traceback)",
            r["sidecar_exit"] == 0 and not r["sidecar_log_errors"],
            f"exit {r['sidecar_exit']}, {len(r['sidecar_log_errors'])} error lines",
        ),
    ]
    if settings.max_rss_growth_pct is not None:
        growth = r["rss_mb"]["steady_growth_pct"]
        checks.append(
            (
                f"RSS growth over the last four fifths <= {settings.max_rss_growth_pct:g}%",
                growth <= settings.max_rss_growth_pct,
                f"{growth:+.1f}%",
            )
        )
    return [{"name": name, "ok": bool(ok), "detail": detail} for name, ok, detail in checks]


def markdown(r: dict[str, Any]) -> str:
    """The report as Markdown: the figures, then the invariants."""
    s, audio, cancels, rss, fds = r["settings"], r["audio"], r["cancels"], r["rss_mb"], r["fds"]
    errors = ", ".join(f"{k} {v:,}" for k, v in r["error_reasons"].items()) or "none"
    lines = [
        f"# Soak: {r['calls']:,} calls, {s['concurrency']} at a time",
        "",
        f"Faults: 1 task in {s['fail_start_every']} fails at start, 1 in {s['fail_mid_every']} "
        f"after its first frame, 1 in {s['drop_mid_every']} has its connection dropped after "
        f"its first frame; every run-task is answered Throttling.RateQuota for "
        f"{s['throttle_share']:.0%} of every {_THROTTLE_PERIOD_S:g} s; callers cancel "
        f"{s['cancel_share']:.0%} of the calls at a random moment; audio paced at "
        f"{s['realtime_factor']:g} x its duration; seed {s['seed']}.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| calls | {r['calls']:,} in {r['duration_s']:,} s ({r['calls_per_s']:,} calls/s) |",
        f"| successful | {r['ok']:,}, byte-exact {audio['ok_byte_exact']:,} |",
        f"| errors by code | {errors} |",
        f"| faults | {r['fault_share']:.1%} of calls |",
        f"| audio received | {r['audio_bytes']:,} bytes |",
        f"| cut calls with audio | {audio['cut_calls_with_audio']:,}, a clean prefix "
        f"{audio['cut_calls_prefix_ok']:,} |",
        f"| caller cancels | {cancels['caller_cancels']:,} "
        f"({_pairs(cancels['phases'])}); their upstream tasks: "
        f"{_pairs(cancels['their_upstream_tasks'])} |",
        f"| upstream tasks abandoned | {cancels['upstream_abandoned']:,} "
        f"({cancels['upstream_dropped_by_emulator']:,} dropped by the emulator) |",
        f"| upstream outcomes | {_pairs(r['upstream']['outcomes'])} |",
        f"| leaked upstream sockets | {r['leaked_sockets']} (pool idle {r['pool']['idle']}, "
        f"upstream open {r['upstream']['connections_open']}; "
        f"{r['upstream']['connections_opened']:,} opened in all) |",
        f"| leaked fds | {fds['leaked']:+d} (start {fds['start']}, end {fds['end']}; of "
        f"them upstream sockets {fds['upstream_sockets'][0]} then "
        f"{fds['upstream_sockets'][1]}) |",
        f"| sidecar RSS | {rss['start']:.1f} MiB after warm-up, {rss['steady']:.1f} MiB at a "
        f"fifth of the calls, {rss['end']:.1f} MiB at the end ({rss['growth_pct']:+.1f}% "
        f"after warm-up, {rss['steady_growth_pct']:+.1f}% over the last four fifths), peak "
        f"{rss['peak']:.1f} MiB |",
        "",
        "| invariant | result | figures |",
        "| --- | --- | --- |",
    ]
    for check in r["invariants"]:
        lines.append(
            f"| {check['name']} | {'ok' if check['ok'] else '**FAILED**'} | {check['detail']} |"
        )
    for mismatch in audio["mismatches"]:
        lines.append(f"\n- mismatch: {mismatch}")
    for status in r["unexpected_statuses"][:5]:
        lines.append(f"\n- unexpected status: {status}")
    lines.append(f"\nLogs: {r['logs']}")
    return "\n".join(lines) + "\n"


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


class PlotUnavailable(RuntimeError):
    """Raised when ``--plot`` is asked for but matplotlib is not installed."""


def plot(r: dict[str, Any], path: Path) -> None:
    """Write a PNG of the sidecar's RSS over the run, with the calls completed."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib, an optional dependency: pip install 'matplotlib==3.11.2'"
        ) from exc
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    samples = r["rss_mb"]["samples"]
    seconds = [s[0] for s in samples]
    figure, rss_axis = plt.subplots(figsize=(9, 4.5))
    rss_axis.plot(seconds, [s[1] for s in samples], color="tab:blue", label="sidecar RSS")
    rss_axis.set_xlabel("seconds")
    rss_axis.set_ylabel("RSS (MiB)", color="tab:blue")
    rss_axis.set_ylim(bottom=0)
    calls_axis = rss_axis.twinx()
    calls_axis.plot(seconds, [s[2] for s in samples], color="tab:gray", linestyle=":")
    calls_axis.set_ylabel("calls completed", color="tab:gray")
    rss_axis.set_title(
        f"soak: {r['calls']:,} calls, {r['settings']['concurrency']} at a time, "
        f"faults {r['fault_share']:.1%}\nRSS {r['rss_mb']['growth_pct']:+.1f}% after warm-up, "
        f"{r['rss_mb']['steady_growth_pct']:+.1f}% over the last 4/5 of the calls"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the soak's flags on ``parser``."""
    d = SoakSettings()
    add = parser.add_argument
    add("--calls", type=int, default=d.calls, help=f"calls in all (default {d.calls:,})")
    add(
        "--concurrency",
        type=int,
        default=d.concurrency,
        help=f"calls at a time; also the sidecar's --pool-max-size (default {d.concurrency})",
    )
    add(
        "--fail-start-every",
        type=int,
        default=d.fail_start_every,
        help=f"the emulator fails every Nth task at start (default {d.fail_start_every}; 0 off)",
    )
    add(
        "--fail-mid-every",
        type=int,
        default=d.fail_mid_every,
        help=f"... every Nth task after its first frame (default {d.fail_mid_every})",
    )
    add(
        "--drop-mid-every",
        type=int,
        default=d.drop_mid_every,
        help=f"... drops the TCP connection of every Nth task (default {d.drop_mid_every})",
    )
    add(
        "--throttle-share",
        type=float,
        default=d.throttle_share,
        help=f"share of the time the emulator answers every run-task with Throttling.RateQuota, "
        f"in episodes at the start of every {_THROTTLE_PERIOD_S:g} s (default {d.throttle_share})",
    )
    add(
        "--cancel-share",
        type=float,
        default=d.cancel_share,
        help=f"share of calls their caller cancels at a random moment (default {d.cancel_share})",
    )
    add(
        "--unary-share",
        type=float,
        default=d.unary_share,
        help=f"share of calls made with Synthesize instead of StreamingSynthesize "
        f"(default {d.unary_share})",
    )
    add(
        "--realtime-factor",
        type=float,
        default=d.realtime_factor,
        help=f"the emulator's audio pacing (default {d.realtime_factor}: 20x real time)",
    )
    add(
        "--min-fault-share",
        type=float,
        default=d.min_fault_share,
        help=f"fail the run unless faults hit at least this share of calls "
        f"(default {d.min_fault_share})",
    )
    add(
        "--max-rss-growth",
        dest="max_rss_growth_pct",
        type=float,
        help="fail the run when the sidecar's RSS grows more than this many percent over the "
        "last four fifths of the calls (default: report only)",
    )
    add(
        "--rss-interval",
        dest="rss_interval_s",
        type=float,
        default=d.rss_interval_s,
        help=f"seconds between RSS samples (default {d.rss_interval_s})",
    )
    add("--seed", type=int, default=d.seed, help="seed of the call plan (default 1)")
    add(
        "--sidecar-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `serve` (repeatable; write --sidecar-arg=--flag=value)",
    )
    add(
        "--logs",
        type=Path,
        metavar="DIR",
        help="keep the processes' logs in DIR (default: a temporary directory)",
    )
    add("--json", type=Path, metavar="PATH", help="write the full report as JSON")
    add(
        "--plot",
        type=Path,
        metavar="PATH",
        help="write a PNG of the sidecar's RSS over time (needs matplotlib)",
    )


def settings_from_args(args: argparse.Namespace) -> SoakSettings:
    return SoakSettings(
        calls=args.calls,
        concurrency=args.concurrency,
        fail_start_every=args.fail_start_every,
        fail_mid_every=args.fail_mid_every,
        drop_mid_every=args.drop_mid_every,
        throttle_share=args.throttle_share,
        cancel_share=args.cancel_share,
        unary_share=args.unary_share,
        realtime_factor=args.realtime_factor,
        min_fault_share=args.min_fault_share,
        max_rss_growth_pct=args.max_rss_growth_pct,
        rss_interval_s=args.rss_interval_s,
        seed=args.seed,
        log_dir=args.logs,
        sidecar_args=tuple(args.sidecar_arg),
    )


async def run(args: argparse.Namespace) -> int:
    """Run the soak as the flags say; return the exit code."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        sys.stderr.write(f"cosyvoice-sidecar soak: {exc}\n")
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        sys.stderr.write(
            "cosyvoice-sidecar soak: --plot needs matplotlib: pip install 'matplotlib==3.11.2'\n"
        )
        return 2
    console = Console(stderr=True)
    try:
        report = await run_soak(settings, console)
    except ChildError as exc:
        sys.stderr.write(f"cosyvoice-sidecar soak: {exc}\n")
        return 1
    sys.stdout.write(markdown(report))
    sys.stdout.flush()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(report, args.plot)
    return 0 if report["passed"] else 1


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` and run the soak; return the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the emulator and the sidecar as processes, make many calls under a "
        "fault mix with random caller cancels, check every audio byte, and report leaks and "
        "memory (Markdown on stdout; --json, --plot). Exit code 1 when an invariant fails.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130

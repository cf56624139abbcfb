"""What every row of the fault matrix shares: the lab it runs in and the checks after it.

A row's scenario injects its fault through a :class:`Lab` and returns what
each caller saw (:class:`Seen`); the matrix then checks the same things after
every row (:meth:`Lab.settled`, :meth:`Lab.next_call_is_exact`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.emulator import AudioSpec, Emulator, EmulatorKnobs, task_audio
from sidecar.emulator.sentences import SentenceSplitter
from sidecar.server import SidecarServer
from tests.conftest import StartSidecar
from tests.faults.upstreams import EmulatorProcess
from tests.helpers import assert_pool_settles, eventually, eventually_async, sha256, task_record
from tests.timing import scaled

__all__ = [
    "NEXT_TEXT",
    "Lab",
    "Scenario",
    "Seen",
    "expected_audio",
    "first_audio",
    "seen",
    "seen_error",
    "wait_running",
]

NEXT_TEXT = "The next call after the fault. Every byte of it is checked."


@dataclass(frozen=True)
class Seen:
    """What a caller saw at the end of its call: the code, ErrorInfo's reason, a RetryInfo."""

    code: grpc.StatusCode
    reason: str = ""
    retry: bool = False
    # The status message, for the rows that check its wording; not part of what the table says.
    details: str = field(default="", compare=False)

    def __str__(self) -> str:
        hint = " +RetryInfo" if self.retry else ""
        return f"{self.code.name} {self.reason or '-'}{hint}"


def seen(error: grpc.aio.AioRpcError) -> Seen:
    """Read the code and the rich details (ErrorInfo, RetryInfo) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason = ""
    retry = False
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
        retry = retry or detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    return Seen(error.code(), reason, retry, error.details() or "")


async def seen_error(call: Awaitable[object]) -> Seen:
    """Await a call that must fail; return what its caller saw."""
    try:
        result = await call
    except grpc.aio.AioRpcError as exc:
        return seen(exc)
    raise AssertionError(f"the call succeeded: {result!r:.200}")


@dataclass
class Lab:
    """One row's world: the emulator and sidecars of the test, and where the after-checks look.

    A scenario that runs against another upstream (an emulator process) sets
    :attr:`remote`; one whose sidecar ended (a signal) starts the next one
    with :meth:`sidecar`, as an orchestrator would, so the after-checks
    always have a sidecar to look at.
    """

    emulator: Emulator
    start_sidecar: StartSidecar
    tmp_path: Path
    caplog: pytest.LogCaptureFixture
    server: SidecarServer | None = None
    remote: EmulatorProcess | None = None
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # ERROR lines the row's fault must cause (text they contain); any other is a failure.
    expected_errors: list[str] = field(default_factory=list)

    async def sidecar(self, **overrides: Any) -> SidecarServer:
        """Start the row's sidecar (config overrides as in ``start_sidecar``)."""
        self.server = await self.start_sidecar(**overrides)
        return self.server

    def client(self) -> AsyncSynthesizerClient:
        assert self.server is not None, "the scenario started no sidecar"
        # The statuses as the sidecar sends them: the clients' own retries are tested
        # in tests/test_python_client.py and tests/clients.
        return AsyncSynthesizerClient(self.server.address, retry=False)

    def access_codes(self) -> list[str]:
        """The gRPC code of every call the in-process sidecars logged an access line for."""
        records = [r for r in self.caplog.records if r.name == "sidecar.access"]
        return [r.call["grpc_code"] for r in records]  # type: ignore[attr-defined]

    async def settled(self) -> None:
        """No call holds a connection, both ends agree on the sockets, nothing runs upstream."""
        server = self.server
        assert server is not None
        if self.remote is None:
            emulator = self.emulator
            await assert_pool_settles(server, emulator)
            await eventually(
                lambda: emulator.stats.running_tasks == 0, what=f"nothing running: {emulator!r}"
            )
            return
        remote = self.remote

        async def agreed() -> bool:
            stats = await remote.stats()
            status = server.pool.status()
            return (
                status.busy == status.opening == status.closing == 0
                and stats["connections_open"] == status.idle
                and stats["running_tasks"] == 0
            )

        await eventually_async(agreed, what=f"{server.pool!r} vs the emulator process")

    async def next_call_is_exact(self) -> None:
        """The next ordinary call succeeds with exactly the audio the upstream sent."""
        async with self.client() as client:
            result = await client.synthesize(NEXT_TEXT, timeout=scaled(10))
        task_id = result.started.task_id
        if self.remote is None:
            record = task_record(self.emulator, task_id)
            outcome, digest, sent = record.outcome, record.audio_sha256, record.audio_bytes
        else:
            stats = await self.remote.stats()
            found = [t for t in stats["tasks"] if t["task_id"] == task_id]
            assert found, f"the emulator process saw no task {task_id}"
            outcome, digest, sent = (
                found[0]["outcome"],
                found[0]["audio_sha256"],
                found[0]["audio_bytes"],
            )
        assert outcome == "finished"
        assert len(result.audio) == sent == result.completed.audio_bytes > 0
        assert sha256(result.audio) == digest

    def unexpected_errors(self) -> list[str]:
        """Log records that are tracebacks, or ERRORs the row did not expect."""
        return [
            r.getMessage()
            for r in self.caplog.records
            if r.exc_info
            or (
                r.levelno >= logging.ERROR
                and not any(e in r.getMessage() for e in self.expected_errors)
            )
        ]

    async def aclose(self) -> None:
        for cleanup in reversed(self.cleanups):
            await cleanup()


Scenario = Callable[[Lab], Awaitable[list[Seen]]]


def expected_audio(text: str, sample_rate: int = 22050) -> bytes:
    """Every byte the emulator sends for ``text`` in one task (pcm, default knobs and voice)."""
    splitter = SentenceSplitter()
    sentences = [s.text for s in (*splitter.feed(text), *splitter.flush())]
    spec = AudioSpec(format="pcm", sample_rate=sample_rate)
    return task_audio(sentences, spec, EmulatorKnobs().ms_per_character)


async def first_audio(responses: Any) -> Any:
    """Read responses until the first audio chunk (bounded by the caller's deadline)."""
    async for response in responses:
        if response.HasField("audio"):
            return response
    raise AssertionError("the stream ended before any audio")


async def wait_running(emulator: Emulator, count: int = 1) -> None:
    await emulator.wait_for(lambda s: s.running_tasks >= count, scaled(5))


async def gather_seen(calls: list[asyncio.Task[object]]) -> list[Seen]:
    return [await seen_error(call) for call in calls]

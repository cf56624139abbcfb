"""What every fuzz example must leave behind: a clean status, a clean log, a sidecar that works."""

from __future__ import annotations

import logging
from typing import Final

import grpc
import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from tests.helpers import assert_pool_settles, sha256, task_record
from tests.timing import scaled

__all__ = ["FORBIDDEN", "WRITE_RACE", "LogWindow", "check_status", "still_exact"]

# A bug's statuses; and DEADLINE_EXCEEDED, since every fuzzed call ends its
# input (a half-close) and so must end on its own, well before its deadline.
FORBIDDEN: Final = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# grpcio's asyncio client reports INTERNAL with this message (and no details)
# when a request it writes meets the end of the call, e.g. after the sidecar
# refused the stream's first message (grpc/grpc#36066): the client's doing,
# not the sidecar's, whose answer is then read from its access line.
WRITE_RACE: Final = "Internal error from Core"


class LogWindow:
    """The log records of one example (the captured log grows across examples)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog
        self._start = len(caplog.records)

    def records(self) -> list[logging.LogRecord]:
        return self._caplog.records[self._start :]

    def access_codes(self) -> list[str]:
        """The code of each call the sidecar wrote an access line for, in this example."""
        lines = [r for r in self.records() if r.name == "sidecar.access"]
        return [r.call["grpc_code"] for r in lines]  # type: ignore[attr-defined]

    def problems(self) -> list[str]:
        """Tracebacks and ERROR lines: neither may come from a caller's input."""
        return [
            f"{r.levelname} {r.name}: {r.getMessage()}"
            for r in self.records()
            if r.levelno >= logging.ERROR or r.exc_info
        ]


def check_status(code: grpc.StatusCode, details: str, window: LogWindow) -> grpc.StatusCode | None:
    """Check that the caller's status is clean, and every answer the sidecar logged.

    Return the sidecar's answer: its access line's code when it wrote one (the
    Synthesizer's calls; other services log none), else the caller's code;
    None when neither tells (the client library's own INTERNAL, unlogged).
    """
    served = window.access_codes()
    assert not [c for c in served if grpc.StatusCode[c] in FORBIDDEN], served
    if code is grpc.StatusCode.INTERNAL and details == WRITE_RACE:
        return grpc.StatusCode[served[-1]] if served else None
    assert code not in FORBIDDEN, f"{code.name}: {details}"
    return code


async def still_exact(server: SidecarServer, emulator: Emulator) -> None:
    """The pool settled, and an ordinary call still gets exactly the upstream's audio."""
    await assert_pool_settles(server, emulator)
    async with AsyncSynthesizerClient(server.address, retry=False) as client:
        result = await client.synthesize("An ordinary call after the fuzz.", timeout=scaled(10))
    record = task_record(emulator, result.started.task_id)
    assert record.outcome == "finished"
    assert sha256(result.audio) == record.audio_sha256

"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.emulator import Emulator, TaskRecord
from sidecar.server import SidecarServer
from tests.timing import scaled

__all__ = [
    "assert_pool_settles",
    "eventually",
    "eventually_async",
    "require_executable",
    "task_record",
    "upstream_stalled",
]


async def eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Wait until ``condition()`` holds, for at most ``timeout`` (scaled) seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {scaled(timeout):g}s: {what}")
        await asyncio.sleep(0.01)


async def eventually_async(
    condition: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = ""
) -> None:
    """Like :func:`eventually` for a condition that must await (e.g. an RPC)."""
    deadline = time.monotonic() + scaled(timeout)
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {scaled(timeout):g}s: {what}")
        await asyncio.sleep(0.02)


async def assert_pool_settles(server: SidecarServer, emulator: Emulator) -> None:
    """No call holds a connection, nothing is half-closed, and both ends agree on the count.

    The invariant after every error and cancellation: the pool's idle
    connections are exactly the sockets the emulator sees open.
    """

    def settled() -> bool:
        status = server.pool.status()
        return (
            status.busy == 0
            and status.opening == 0
            and status.closing == 0
            and emulator.stats.connections_open == status.idle
        )

    await eventually(
        settled, what=f"{server.pool!r} vs emulator open={emulator.stats.connections_open}"
    )


async def upstream_stalled(emulator: Emulator, task_id: str) -> int:
    """Return the bytes the emulator had sent for ``task_id`` once its sending stopped.

    The emulator stops when TCP pushes back: the proof that a slow caller holds
    the upstream back, not the sidecar's memory.
    """
    last = -1
    for _ in range(60):
        sent = task_record(emulator, task_id).audio_bytes
        if sent == last:
            return sent
        last = sent
        await asyncio.sleep(scaled(0.25))
    raise AssertionError("the upstream never stalled: nothing pushed back")


def task_record(emulator: Emulator, task_id: str) -> TaskRecord:
    """Return the emulator's record of ``task_id``."""
    for record in emulator.stats.tasks:
        if record.task_id == task_id:
            return record
    raise AssertionError(f"the emulator saw no task {task_id}")


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


_REPO = Path(__file__).resolve().parents[1]


def require_executable(name: str) -> str:
    """Return the path of tool ``name`` (next to this interpreter, in .tools/bin or on PATH).

    Missing: the test fails when ``CI`` is set (CI must never turn client and
    tool tests into silent skips), and is skipped with the reason otherwise.
    """
    for candidate in (Path(sys.executable).parent / name, _REPO / ".tools" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (make venv / make tools install it)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; it is required in CI")
    pytest.skip(message)

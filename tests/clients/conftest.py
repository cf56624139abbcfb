"""A real ``cosyvoice-sidecar serve --emulator`` subprocess for the client tests.

The binary is ``$COSYVOICE_SIDECAR_BIN`` when set (the Makefile sets it for the
Go and Java tests), else the console script next to this interpreter.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import pytest

from tests.processes import SIDECAR_BIN
from tests.timing import scaled


@dataclass
class RunningSidecar:
    """A sidecar subprocess on the embedded emulator, and the emulator's records."""

    address: str
    emulator_url: str
    proc: subprocess.Popen[bytes] = field(repr=False)
    stderr: IO[bytes] = field(repr=False)

    def _get(self, path: str) -> Any:
        http = re.sub(r"^ws://([^/]+)/.*$", rf"http://\1{path}", self.emulator_url)
        with urllib.request.urlopen(http, timeout=scaled(5)) as response:  # noqa: S310 - loopback
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """The emulator's ``GET /_emulator/stats`` answer."""
        result: dict[str, Any] = self._get("/_emulator/stats")
        return result

    def task(self, task_id: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll (bounded) until the emulator's record of ``task_id`` satisfies ``until``."""
        deadline = time.monotonic() + scaled(10)
        last: dict[str, Any] | None = None
        while True:
            for record in self.stats()["tasks"]:
                if record["task_id"] == task_id:
                    last = record
            if last is not None and until(last):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"emulator record of task {task_id}: {last}")
            time.sleep(0.05)

    def logs(self) -> str:
        """The sidecar's stderr so far, for failure messages."""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")


def _wait_for_lines(proc: subprocess.Popen[bytes], timeout: float) -> tuple[str, str]:
    """Read stdout in a thread until the ``serving on`` line; keep draining afterwards."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace").strip())
        lines.put(None)

    threading.Thread(target=pump, name="sidecar-stdout", daemon=True).start()
    emulator = ""
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no 'serving on' line within {timeout:g}s") from None
        if line is None:
            raise AssertionError("the sidecar exited before printing 'serving on'")
        if line.startswith("emulator on ") and not emulator:
            emulator = line.removeprefix("emulator on ")
        if line.startswith("serving on "):
            if not emulator:
                raise AssertionError("'serving on' came without 'emulator on' before it")
            return line.removeprefix("serving on "), emulator


@pytest.fixture(scope="module")
def sidecar_process() -> Iterator[RunningSidecar]:
    """One ``serve --emulator --listen 127.0.0.1:0`` subprocess per test module.

    Stopped with SIGTERM at the end; anything but a clean exit 0 fails the module.
    """
    binary = os.environ.get("COSYVOICE_SIDECAR_BIN") or SIDECAR_BIN
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(  # noqa: S603 - our own console script, no shell
            [binary, "serve", "--emulator", "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        try:
            try:
                address, emulator_url = _wait_for_lines(proc, scaled(30))
            except AssertionError as exc:
                stderr.seek(0)
                log = stderr.read().decode(errors="replace")
                raise AssertionError(f"{exc}\n--- sidecar stderr ---\n{log}") from None
            running = RunningSidecar(address, emulator_url, proc, stderr)
            yield running
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=scaled(20))
            assert code == 0, f"sidecar exited {code} after SIGTERM:\n{running.logs()}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=scaled(10))

"""The load generator of the sidecar modes: the Go one (built once per run) or the Python one.

Both speak the protocol of :mod:`cosyvoice_sidecar_bench.worker` (spec JSON as the one
argument, a ``ready`` line, a line on stdin, a ``result`` line) for the
``grpc-stream`` and ``grpc-unary`` modes:

* ``go`` (the default): ``clients/go/cmd/loadgen``, built from this source tree
  with the ``go`` on PATH into the run's log directory. One process, one
  HTTP/2 connection, a goroutine per stream: the sidecar's real callers are Go
  services, and it leaves the two cores to the sidecar and the emulator.
* ``python``: ``python -m cosyvoice_sidecar_bench.worker`` on grpc.aio. It needs no Go,
  but costs about 1.5x the Go one's CPU per task (2.3 vs 1.5 ms at 100
  streams, 1.9 vs 1.25 ms at 200, on 2 cores) and twice its memory, on the
  same cores the sidecar runs on, which inflates the sidecar's figures at high
  concurrency. Most of what is left is per-message socket I/O, which any
  gRPC client pays.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

__all__ = ["GO_SOURCE", "LOADGENS", "Loadgen", "LoadgenError", "prepare", "unavailable"]

LOADGENS: Final = ("go", "python")
# The Go module the load generator belongs to, in this source tree.
GO_SOURCE: Final = Path(__file__).resolve().parents[2] / "clients" / "go"
_PACKAGE: Final = "./cmd/loadgen"
_BUILD_TIMEOUT_S: Final = 600.0  # a first build may download the module's dependencies


class LoadgenError(RuntimeError):
    """Raised when the chosen load generator cannot be prepared (no Go, a failed build)."""


@dataclass(frozen=True)
class Loadgen:
    """How to start the load generator: ``program *args SPEC_JSON``."""

    name: str  # "go" or "python"
    program: str
    args: tuple[str, ...]
    version: str  # e.g. "go1.26.8", or "grpcio 1.76.0" for the Python one

    def describe(self) -> dict[str, str]:
        """What the report records about it."""
        return {"name": self.name, "version": self.version}


def unavailable(name: str) -> str | None:
    """Return why load generator ``name`` cannot run here, or None if it can."""
    if name not in LOADGENS:
        return f"unknown load generator {name!r}; choose from {', '.join(LOADGENS)}"
    if name == "python":
        return None
    if shutil.which("go") is None:
        return (
            "--loadgen go (the default) builds the Go load generator, but `go` is not on "
            "PATH: install Go 1.26 or later, or use --loadgen python"
        )
    if not (GO_SOURCE / "go.mod").is_file() or not (GO_SOURCE / _PACKAGE).is_dir():
        return (
            f"--loadgen go builds {GO_SOURCE / _PACKAGE}, which is not there (the bench runs "
            "from an installed package, not the source tree): use --loadgen python"
        )
    return None


async def prepare(
    name: str, directory: Path, progress: Callable[[str], None] | None = None
) -> Loadgen:
    """Return load generator ``name``; the Go one is built into ``directory`` first
    (said to ``progress``: it takes seconds)."""
    problem = unavailable(name)
    if problem:
        raise LoadgenError(problem)
    if name == "go" and progress is not None:
        progress("building the Go load generator (go build ./cmd/loadgen in clients/go)")
    if name == "python":
        try:
            grpcio = metadata.version("grpcio")
        except metadata.PackageNotFoundError:
            grpcio = "unknown"
        return Loadgen(
            "python", sys.executable, ("-m", "cosyvoice_sidecar_bench.worker"), f"grpcio {grpcio}"
        )
    go = shutil.which("go")
    assert go is not None  # unavailable() checked
    binary = directory / "loadgen"
    env = {**os.environ, "GOFLAGS": "-mod=mod"}  # as the Makefile builds the module
    code, output = await _run([go, "build", "-o", str(binary), _PACKAGE], env)
    if code != 0:
        raise LoadgenError(
            f"`go build {_PACKAGE}` in {GO_SOURCE} failed ({code}):\n{output[-3000:]}\n"
            "fix the build, or use --loadgen python"
        )
    code, output = await _run([go, "version", str(binary)], env)
    version = output.strip().rpartition(": ")[2] if code == 0 else "unknown"
    return Loadgen("go", str(binary), (), version)


async def _run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a go command in the module, bounded; return its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=GO_SOURCE,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(_BUILD_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"no result within {_BUILD_TIMEOUT_S:g} s"
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")

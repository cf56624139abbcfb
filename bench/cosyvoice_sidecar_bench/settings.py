"""What one bench run does: its modes and settings, as :mod:`.cli` builds them."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cosyvoice_sidecar_bench.loadgen import LOADGENS

__all__ = [
    "API_KEY",
    "DEFAULT_MODES",
    "LOADGEN_MODES",
    "MODES",
    "SIDECAR_MODES",
    "SIDECAR_VARIANTS",
    "TELEMETRY",
    "BenchSettings",
    "Progress",
    "loadgen_call",
]

MODES: Final = (
    "cold",
    "sdk-pool",
    "floor",
    "grpc-floor",
    "sidecar",
    "sidecar-finish",
    "sidecar-unary",
    "sidecar-uvloop",
    "sidecar-b",
    "sidecar-fleet",
)
DEFAULT_MODES: Final = (
    "cold",
    "sdk-pool",
    "floor",
    "grpc-floor",
    "sidecar",
    "sidecar-finish",
    "sidecar-unary",
)
API_KEY: Final = "sk-bench-local"  # the emulator accepts any key; never a real one
# The three ways callers use one sidecar, run on one sidecar process per level
# and repeat: (the load generator's mode, how a stream ends its input).
SIDECAR_MODES: Final = {
    "sidecar": ("grpc-stream", "half-close"),
    "sidecar-finish": ("grpc-stream", "finish"),
    "sidecar-unary": ("grpc-unary", "half-close"),
}
# Modes with a serving process of their own, each run alone on it, streaming
# and half-closing: the sidecar on uvloop, with sidecar-b's extra arguments,
# with the fleet quota on a local Redis; and the bare gRPC server.
SIDECAR_VARIANTS: Final = ("sidecar-uvloop", "sidecar-b", "sidecar-fleet", "grpc-floor")
# The modes a gRPC load generator drives.
LOADGEN_MODES: Final = frozenset({*SIDECAR_MODES, *SIDECAR_VARIANTS})
# What the sidecar processes export: "otlp" (traces and metrics over OTLP/gRPC
# to a stand-in collector process, as production runs) or "off".
TELEMETRY: Final = ("otlp", "off")


def loadgen_call(mode: str) -> tuple[str, str]:
    """Return the load generator's (mode, end) for a mode it drives."""
    return SIDECAR_MODES.get(mode, ("grpc-stream", "half-close"))


Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    """Everything one bench run needs; built by :mod:`cosyvoice_sidecar_bench.cli`."""

    levels: tuple[int, ...] = (1, 20, 100, 200, 400)
    modes: tuple[str, ...] = DEFAULT_MODES
    repeats: int = 2
    duration_s: float = 4.0
    ramp_s: float | None = None  # None: one task length
    task_timeout_s: float = 30.0
    handshake_delay_s: float = 0.1
    first_packet_delay_s: float = 0.15
    realtime_factor: float = 0.25
    chunk_ms: int = 100
    knobs: tuple[str, ...] = ()  # further emulator knobs, NAME=VALUE
    text: str = ""
    fragments: int = 2
    sample_rate: int = 22050
    acquire_timeout_s: float = 120.0
    sidecar_args: tuple[str, ...] = ()
    sidecar_env: tuple[str, ...] = ()  # NAME=VALUE for every sidecar process
    # The "sidecar-b" mode: the same sidecar with these extra arguments and
    # environment, interleaved with "sidecar" (e.g. tracing on vs off).
    b_sidecar_args: tuple[str, ...] = ()
    b_sidecar_env: tuple[str, ...] = ()
    telemetry: str = "otlp"  # TELEMETRY: the sidecars export to a sink process (otlp_sink.py)
    profile_dir: Path | None = None
    profile_native: bool = False  # py-spy --native (pauses the process per sample)
    log_dir: Path | None = None
    preset: str = "default"
    label: str = ""  # free text recorded in the report, e.g. what changed since the last run
    loadgen: str = (
        "go"  # what drives the sidecar modes: "go" or "python" (cosyvoice_sidecar_bench.loadgen)
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown:
            raise ValueError(f"unknown mode {unknown[0]!r}; modes: {', '.join(MODES)}")
        if not self.modes or not self.levels or min(self.levels) < 1:
            raise ValueError("need at least one mode and levels >= 1")
        if self.repeats < 1 or self.duration_s <= 0 or self.task_timeout_s <= 0:
            raise ValueError("repeats must be >= 1, duration and task timeout > 0")
        if self.fragments < 1:
            raise ValueError("fragments must be >= 1")
        if self.loadgen not in LOADGENS:
            raise ValueError(f"unknown load generator {self.loadgen!r}; choose from go, python")
        if self.telemetry not in TELEMETRY:
            raise ValueError(f"telemetry must be one of {', '.join(TELEMETRY)}")
        for pair in (*self.sidecar_env, *self.b_sidecar_env, *self.knobs):
            if "=" not in pair:
                raise ValueError(f"expected NAME=VALUE, not {pair!r}")

    def run_log_dir(self, prefix: str) -> Path:
        """The run's log directory, created: ``log_dir`` if given, else a fresh temporary one
        named ``prefix``..."""
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix=prefix))
        log_dir.mkdir(parents=True, exist_ok=True)
        return log_dir

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("profile_dir", "log_dir"):
            data[key] = str(data[key]) if data[key] else None
        return data

"""What one bench run does: its modes and settings, as :mod:`.cli` builds them."""

from __future__ import annotations

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
    "BenchSettings",
    "Progress",
]

MODES: Final = (
    "cold",
    "sdk-pool",
    "floor",
    "sidecar",
    "sidecar-unary",
    "sidecar-uvloop",
    "sidecar-b",
)
DEFAULT_MODES: Final = ("cold", "sdk-pool", "floor", "sidecar", "sidecar-unary")
API_KEY: Final = "sk-bench-local"  # the emulator accepts any key; never a real one
SIDECAR_MODES: Final = {"sidecar": "grpc-stream", "sidecar-unary": "grpc-unary"}
# The modes a gRPC load generator drives (each runs a sidecar process).
LOADGEN_MODES: Final = frozenset({*SIDECAR_MODES, "sidecar-uvloop", "sidecar-b"})

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
    otlp_sink: bool = False  # sidecar-b exports over OTLP/gRPC to a sink process (otlp_sink.py)
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
        if self.otlp_sink and "sidecar-b" not in self.modes:
            raise ValueError("--otlp-sink exports from the sidecar-b mode: add it to --modes")
        for pair in (*self.sidecar_env, *self.b_sidecar_env, *self.knobs):
            if "=" not in pair:
                raise ValueError(f"expected NAME=VALUE, not {pair!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("profile_dir", "log_dir"):
            data[key] = str(data[key]) if data[key] else None
        return data

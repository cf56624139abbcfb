"""The resolved settings of one synthesis, as the call and the upstream task need them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskParams"]


@dataclass(frozen=True)
class TaskParams:
    """What one call asks DashScope for: validated, defaults applied (see sidecar.rpc)."""

    model: str
    voice: str
    format: str  # pcm, wav, mp3 or opus
    sample_rate: int
    ssml: bool
    parameters: Mapping[str, Any]  # run-task payload.parameters (docs/dashscope-protocol.md §5)

    def audio_ms(self, nbytes: int) -> float:
        """Return the duration of ``nbytes`` of samples in ms (pcm and wav only, else 0)."""
        if self.format not in ("pcm", "wav"):
            return 0.0
        return nbytes * 1000.0 / (2 * self.sample_rate)  # 16-bit mono (§8)

"""What one benchmark task sends and what it must get back.

Every mode sends the same text, in the same fragments, with the same run-task
parameters, and checks the same number of audio bytes. The expected length
comes from the emulator's own deterministic audio (``sidecar.emulator.audio``)
and the knobs the running emulator reports, so a changed knob cannot make the
check pass by accident.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from sidecar.emulator.audio import AudioSpec, task_audio
from sidecar.emulator.sentences import SentenceSplitter

__all__ = ["DEFAULT_TEXT", "Workload", "split_fragments"]

# 40 characters, one sentence: a short reply, as a voice assistant speaks it.
DEFAULT_TEXT: Final = "Warm sockets make the first packet fast."
MODEL: Final = "cosyvoice-v3-flash"
VOICE: Final = "longanyang"


def split_fragments(text: str, count: int) -> list[str]:
    """Cut ``text`` at word boundaries into ``count`` fragments (fewer if it has fewer words)."""
    words = re.findall(r"\S+\s*", text)
    if count <= 1 or len(words) <= 1:
        return [text]
    count = min(count, len(words))
    bounds = [round(i * len(words) / count) for i in range(count + 1)]
    return ["".join(words[bounds[i] : bounds[i + 1]]) for i in range(count)]


@dataclass(frozen=True)
class Workload:
    """One task: text, fragments, audio format, and the checks derived from the knobs."""

    text: str
    fragments: list[str]
    sample_rate: int
    model: str = MODEL
    voice: str = VOICE
    expected_bytes: int = 0
    intrinsic_ms: float = 0.0  # what the upstream itself takes to the first audio byte
    audio_ms: float = 0.0  # audio duration of one task
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls, text: str, fragment_count: int, sample_rate: int, knobs: dict[str, Any]
    ) -> Workload:
        """Derive the expected audio and intrinsic delay from the emulator's ``knobs``."""
        fragments = split_fragments(text, fragment_count)
        splitter = SentenceSplitter()
        sentences = [s.text for f in fragments for s in splitter.feed(f)]
        sentences += [s.text for s in splitter.flush()]
        spec = AudioSpec("pcm", sample_rate)
        expected = len(task_audio(sentences, spec, float(knobs["ms_per_character"])))
        whole = SentenceSplitter()
        unary = [s.text for s in whole.feed(text)] + [s.text for s in whole.flush()]
        if unary != sentences:
            raise ValueError("the fragments change the sentence split; choose other fragments")
        parameters = {
            # What the sidecar sends for an empty config with format pcm (sidecar.params).
            "text_type": "PlainText",
            "voice": VOICE,
            "format": "pcm",
            "sample_rate": sample_rate,
            "volume": 50,
            "rate": 1.0,
            "pitch": 1.0,
        }
        intrinsic_s = float(knobs["start_delay_s"]) + float(knobs["first_packet_delay_s"])
        return cls(
            text=text,
            fragments=fragments,
            sample_rate=sample_rate,
            expected_bytes=expected,
            intrinsic_ms=intrinsic_s * 1000,
            audio_ms=expected / 2 * 1000 / sample_rate,
            parameters=parameters,
        )

    def task_seconds(self, realtime_factor: float) -> float:
        """Return how long one task lasts on an idle emulator (first packet + paced audio)."""
        return (self.intrinsic_ms + self.audio_ms * realtime_factor) / 1000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        return cls(**data)

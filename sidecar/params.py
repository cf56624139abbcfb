"""From a caller's ``SynthesisConfig`` to DashScope run-task parameters.

Pure and synchronous: validates every field against protocol §5 before
anything goes upstream, fills server-side defaults, and raises
:class:`~sidecar.errors.InvalidRequest` naming the offending field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from google.protobuf import json_format

from sidecar.config import SAMPLE_RATES, Config
from sidecar.errors import InvalidRequest

__all__ = ["FORMAT_NAMES", "TaskParams", "resolve"]

FORMAT_NAMES: Final = {
    pb.AUDIO_FORMAT_PCM: "pcm",
    pb.AUDIO_FORMAT_WAV: "wav",
    pb.AUDIO_FORMAT_MP3: "mp3",
    pb.AUDIO_FORMAT_OPUS: "opus",
}
FORMAT_ENUMS: Final = {name: value for value, name in FORMAT_NAMES.items()}

_MAX_NAME = 128  # model and voice ids
_MAX_INSTRUCTION = 128  # SDK docstring (§5)
_MAX_HINTS = 8
# Parameters that named fields control; extra_parameters may not override them.
_NAMED: Final = frozenset(
    {
        "text_type",
        "voice",
        "format",
        "sample_rate",
        "volume",
        "rate",
        "pitch",
        "seed",
        "instruction",
        "language_hints",
        "enable_ssml",
        "word_timestamp_enabled",
        "bit_rate",
        "model",
    }
)


@dataclass(frozen=True)
class TaskParams:
    """The resolved settings of one synthesis."""

    model: str
    voice: str
    format: str
    sample_rate: int
    ssml: bool
    parameters: dict[str, Any]  # run-task payload.parameters (§4.1)

    @property
    def format_enum(self) -> int:
        return FORMAT_ENUMS[self.format]

    def audio_ms(self, nbytes: int) -> float:
        """Return the duration of ``nbytes`` of samples in ms (pcm and wav only, else 0)."""
        if self.format not in ("pcm", "wav"):
            return 0.0
        return nbytes * 1000.0 / (2 * self.sample_rate)  # 16-bit mono (§8)


def resolve(config: pb.SynthesisConfig, defaults: Config) -> TaskParams:
    """Validate ``config`` and merge it with the server defaults."""
    model = _name("config.model", config.model or defaults.default_model)
    voice = _name("config.voice", config.voice or defaults.default_voice)
    if config.format == pb.AUDIO_FORMAT_UNSPECIFIED:
        fmt = defaults.default_format
    elif config.format in FORMAT_NAMES:
        fmt = FORMAT_NAMES[config.format]
    else:
        raise InvalidRequest("config.format", f"unknown audio format {config.format}")
    rate_hz = config.sample_rate_hz or defaults.default_sample_rate
    if rate_hz not in SAMPLE_RATES:
        allowed = ", ".join(map(str, SAMPLE_RATES))
        raise InvalidRequest("config.sample_rate_hz", f"{rate_hz} is not one of {allowed}")

    parameters: dict[str, Any] = {
        "text_type": "PlainText",
        "voice": voice,
        "format": fmt,
        "sample_rate": rate_hz,
        "volume": _int_in("config.volume", config, "volume", 0, 100, default=50),
        "rate": _float_in("config.rate", config, "rate", 0.5, 2.0),
        "pitch": _float_in("config.pitch", config, "pitch", 0.5, 2.0),
    }
    if config.HasField("seed"):
        parameters["seed"] = _int_in("config.seed", config, "seed", 0, 65535, default=0)
    if config.instruction:
        if len(config.instruction) > _MAX_INSTRUCTION:
            raise InvalidRequest("config.instruction", f"longer than {_MAX_INSTRUCTION} characters")
        parameters["instruction"] = config.instruction
    if config.language_hints:
        if len(config.language_hints) > _MAX_HINTS or not all(config.language_hints):
            raise InvalidRequest(
                "config.language_hints", f"at most {_MAX_HINTS} non-empty language codes"
            )
        parameters["language_hints"] = list(config.language_hints)
    if config.enable_ssml:
        parameters["enable_ssml"] = True
    if config.word_timestamps:
        parameters["word_timestamp_enabled"] = True
    if config.HasField("opus_bit_rate_kbps"):
        if fmt != "opus":
            raise InvalidRequest("config.opus_bit_rate_kbps", "only allowed with AUDIO_FORMAT_OPUS")
        parameters["bit_rate"] = _int_in(
            "config.opus_bit_rate_kbps", config, "opus_bit_rate_kbps", 6, 510, default=32
        )
    if config.HasField("extra_parameters"):
        extra = json_format.MessageToDict(config.extra_parameters)
        clashing = sorted(_NAMED.intersection(extra))
        if clashing:
            raise InvalidRequest(
                "config.extra_parameters",
                f"{', '.join(clashing)} must be set through the named config fields",
            )
        parameters.update(extra)
    return TaskParams(model, voice, fmt, rate_hz, bool(config.enable_ssml), parameters)


def _name(field: str, value: str) -> str:
    if len(value) > _MAX_NAME or not value.isprintable() or value.strip() != value:
        raise InvalidRequest(field, f"must be at most {_MAX_NAME} printable characters")
    return value


def _int_in(
    field: str, config: pb.SynthesisConfig, name: str, low: int, high: int, *, default: int
) -> int:
    if not config.HasField(name):  # type: ignore[arg-type]
        return default
    value = int(getattr(config, name))
    if not low <= value <= high:
        raise InvalidRequest(field, f"{value} is out of range [{low}, {high}]")
    return value


def _float_in(field: str, config: pb.SynthesisConfig, name: str, low: float, high: float) -> float:
    if not config.HasField(name):  # type: ignore[arg-type]
        return 1.0
    value = float(getattr(config, name))
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidRequest(field, f"{value:g} is out of range [{low:g}, {high:g}]")
    # float32 on the wire: 1.1 arrives as 1.100000023841858; send what was meant.
    return round(value, 4)

"""From a caller's ``SynthesisConfig`` to the task's settings, validated.

Pure and synchronous: every field is checked against what DashScope accepts
(docs/dashscope-protocol.md §5) and against bounds of our own before anything
goes upstream; server defaults fill what the caller left unset. Errors are
:class:`~sidecar.errors.InvalidRequest` naming the offending field.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Final

from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from google.protobuf import struct_pb2

from sidecar import protocol
from sidecar.call import TaskParams
from sidecar.config import MODEL_ID, SAMPLE_RATES, VOICE_ID, Config
from sidecar.errors import InvalidRequest

__all__ = ["FORMAT_ENUMS", "FORMAT_NAMES", "resolve"]

FORMAT_NAMES: Final = {
    pb.AUDIO_FORMAT_PCM: "pcm",
    pb.AUDIO_FORMAT_WAV: "wav",
    pb.AUDIO_FORMAT_MP3: "mp3",
    pb.AUDIO_FORMAT_OPUS: "opus",
}
FORMAT_ENUMS: Final = {name: value for value, name in FORMAT_NAMES.items()}

_LANGUAGE: Final = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,3}")
_MAX_LANGUAGE: Final = 16
_MAX_HINTS: Final = 8
_MAX_EXTRA_BYTES: Final = 16 * 1024
_MAX_EXTRA_DEPTH: Final = 8
# Whole numbers up to 2**53 are exact in a double: those go out as JSON integers.
_MAX_EXACT: Final = 2**53
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
        "phoneme_timestamp_enabled",
        "bit_rate",
        "model",
    }
)


def resolve(config: pb.SynthesisConfig, defaults: Config) -> TaskParams:
    """Validate ``config`` and merge it with the server defaults."""
    model = _id("config.model", config.model or defaults.default_model, MODEL_ID, 64)
    voice = _id("config.voice", config.voice or defaults.default_voice, VOICE_ID, 128)
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
        "text_type": "PlainText",  # also with SSML (§5)
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
        parameters["instruction"] = _instruction(config.instruction)
    if config.language_hints:
        parameters["language_hints"] = _language_hints(list(config.language_hints))
    if config.enable_ssml:
        parameters["enable_ssml"] = True
    if config.word_timestamps or config.phoneme_timestamps:
        parameters["word_timestamp_enabled"] = True
    if config.phoneme_timestamps:
        parameters["phoneme_timestamp_enabled"] = True
    if config.HasField("opus_bit_rate_kbps"):
        if fmt != "opus":
            raise InvalidRequest("config.opus_bit_rate_kbps", "only allowed with AUDIO_FORMAT_OPUS")
        parameters["bit_rate"] = _int_in(
            "config.opus_bit_rate_kbps", config, "opus_bit_rate_kbps", 6, 510, default=32
        )
    if config.HasField("extra_parameters"):
        parameters.update(_extra(config.extra_parameters))
    return TaskParams(model, voice, fmt, rate_hz, bool(config.enable_ssml), parameters)


def _id(field: str, value: str, pattern: re.Pattern[str], limit: int) -> str:
    if not pattern.fullmatch(value):
        raise InvalidRequest(
            field, f"must be 1 to {limit} letters, digits, '.', '_' or '-' (got {value[:40]!r})"
        )
    return value


def _instruction(text: str) -> str:
    # Control characters (Unicode Cc, and lone surrogates), not what isprintable() also
    # refuses: the ideographic space U+3000 and the no-break space are ordinary in Chinese
    # and French instructions.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        raise InvalidRequest("config.instruction", "must not contain control characters")
    count = protocol.count_characters(text)
    if count > protocol.MAX_INSTRUCTION_CHARS:
        raise InvalidRequest(
            "config.instruction",
            f"{count} characters, over DashScope's {protocol.MAX_INSTRUCTION_CHARS} "
            "(CJK ideographs count 2)",
        )
    return text


def _language_hints(hints: list[str]) -> list[str]:
    if len(hints) > _MAX_HINTS:
        raise InvalidRequest("config.language_hints", f"at most {_MAX_HINTS} entries")
    for hint in hints:
        if len(hint) > _MAX_LANGUAGE or not _LANGUAGE.fullmatch(hint):
            raise InvalidRequest(
                "config.language_hints",
                f"{hint[:20]!r} is not a language code (e.g. zh, en, ja; at most "
                f"{_MAX_LANGUAGE} characters)",
            )
    return hints


def _extra(extra: struct_pb2.Struct) -> dict[str, Any]:
    field = "config.extra_parameters"
    if extra.ByteSize() > _MAX_EXTRA_BYTES:
        raise InvalidRequest(field, f"more than {_MAX_EXTRA_BYTES // 1024} KiB")
    clashing = sorted(_NAMED.intersection(extra.fields))
    if clashing:
        raise InvalidRequest(
            field, f"{', '.join(clashing)} must be set through the named config fields"
        )
    return {key: _value(f"{field}.{key}", value, 1) for key, value in extra.fields.items()}


def _value(field: str, value: struct_pb2.Value, depth: int) -> Any:
    """One Struct value as JSON-ready Python, whole numbers as ints."""
    if depth > _MAX_EXTRA_DEPTH:
        raise InvalidRequest(field, f"nested deeper than {_MAX_EXTRA_DEPTH} levels")
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidRequest(field, f"{number} is not a finite number")
        if number.is_integer() and abs(number) <= _MAX_EXACT:
            return int(number)  # a float here would put 5.0 on the wire for 5 (§13)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {
            k: _value(f"{field}.{k}", v, depth + 1) for k, v in value.struct_value.fields.items()
        }
    if kind == "list_value":
        return [
            _value(f"{field}[{i}]", v, depth + 1) for i, v in enumerate(value.list_value.values)
        ]
    return None  # null_value, or unset


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

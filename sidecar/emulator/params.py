"""Validation of run-task parameters (§5), as the emulator's server does it.

:func:`task_params` turns a parsed :class:`~sidecar.protocol.RunTask` into
resolved :class:`TaskParams` or raises :class:`~sidecar.protocol.ProtocolViolation`
carrying the task-failed code and message (§9). The messages the real service
uses are known for a missing voice, a rejected voice (418) and an instruction
over 100 counted characters (428); the others are the emulator's own wording
([EMU]), all with code ``InvalidParameter``. Integer parameters must be JSON
integers (the WebSocket page says they must stay integers; refusing ``50.0``
for ``volume`` is the emulator's reading of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sidecar.emulator.audio import FORMATS, SAMPLE_RATES, AudioSpec
from sidecar.emulator.knobs import EmulatorKnobs
from sidecar.protocol import MAX_INSTRUCTION_CHARS, ProtocolViolation, RunTask, count_characters

__all__ = [
    "DEFAULT_FORMAT",
    "DEFAULT_SAMPLE_RATE",
    "ENGINE_418",
    "ENGINE_428",
    "INVALID_PARAMETER",
    "TaskParams",
    "task_params",
]

INVALID_PARAMETER: Final = "InvalidParameter"
ENGINE_418: Final = "[tts:]Engine return error code: 418"
ENGINE_428: Final = "[tts:]Engine return error code: 428"
# §5: "format": "Default" and "sample_rate": 0 (the Python SDK's default) mean mp3/22050.
DEFAULT_FORMAT: Final = "mp3"
DEFAULT_SAMPLE_RATE: Final = 22050
_TEXT_TYPES: Final = frozenset({"PlainText", "SSML"})


@dataclass(frozen=True)
class TaskParams:
    """A run-task's parameters, validated and with defaults applied."""

    model: str
    voice: str
    audio: AudioSpec
    enable_ssml: bool = False
    word_timestamps: bool = False
    phoneme_timestamps: bool = False


def task_params(run: RunTask, knobs: EmulatorKnobs) -> TaskParams:
    """Validate ``run``'s parameters; raise ProtocolViolation on the first bad one."""
    p = run.parameters
    voice = p.get("voice")
    if not isinstance(voice, str) or not voice:
        raise ProtocolViolation(INVALID_PARAMETER, "Request voice is invalid!")
    if voice in knobs.rejected_voices or run.model in knobs.rejected_models:
        raise ProtocolViolation(INVALID_PARAMETER, ENGINE_418)
    text_type = p.get("text_type", "PlainText")
    if text_type not in _TEXT_TYPES:
        raise _invalid("text_type", text_type, "PlainText or SSML")
    format_ = p.get("format", "Default")
    if not isinstance(format_, str):
        raise _invalid("format", format_, "pcm, wav, mp3 or opus")
    format_ = DEFAULT_FORMAT if format_.lower() == "default" else format_.lower()
    if format_ not in FORMATS:
        raise _invalid("format", p.get("format"), "pcm, wav, mp3 or opus")
    if format_ == "opus" and run.model == "cosyvoice-v1":
        raise ProtocolViolation(INVALID_PARAMETER, "format opus is not supported by cosyvoice-v1")
    sample_rate = p.get("sample_rate", 0)
    if not _is_int(sample_rate) or (sample_rate != 0 and sample_rate not in SAMPLE_RATES):
        raise _invalid("sample_rate", sample_rate, ", ".join(map(str, sorted(SAMPLE_RATES))))
    volume = _number(p, "volume", 50, 0, 100, integer=True)
    rate = _number(p, "rate", 1.0, 0.5, 2.0)
    pitch = _number(p, "pitch", 1.0, 0.5, 2.0)
    seed = _number(p, "seed", 0, 0, 65535, integer=True)
    if format_ == "opus" and "bit_rate" in p:
        _number(p, "bit_rate", 32, 6, 510, integer=True)
    instruction = p.get("instruction")
    if instruction is not None and (
        not isinstance(instruction, str) or count_characters(instruction) > MAX_INSTRUCTION_CHARS
    ):
        raise ProtocolViolation(INVALID_PARAMETER, ENGINE_428)
    enable_ssml = _flag(p, "enable_ssml")
    word_timestamps = _flag(p, "word_timestamp_enabled")
    phoneme_timestamps = _flag(p, "phoneme_timestamp_enabled")
    spec = AudioSpec(
        format=format_,
        sample_rate=sample_rate or DEFAULT_SAMPLE_RATE,
        volume=int(volume),
        rate=float(rate),
        pitch=float(pitch),
        seed=int(seed),
    )
    return TaskParams(run.model, voice, spec, enable_ssml, word_timestamps, phoneme_timestamps)


def _number(
    p: Mapping[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    *,
    integer: bool = False,
) -> float:
    value = p.get(name, default)
    ok = (
        isinstance(value, int if integer else int | float)
        and not isinstance(value, bool)
        and low <= value <= high
    )
    if not ok:
        kind = "an integer" if integer else "a number"
        raise _invalid(name, value, f"{kind} in [{low:g}, {high:g}]")
    return float(value)


def _flag(p: Mapping[str, Any], name: str) -> bool:
    value = p.get(name, False)
    if not isinstance(value, bool):
        raise _invalid(name, value, "true or false")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(name: str, value: object, expected: str) -> ProtocolViolation:
    return ProtocolViolation(
        INVALID_PARAMETER,
        f"Parameter invalid: parameters.{name} is {value!r}, expected {expected}",
    )

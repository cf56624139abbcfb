"""The emulator's knobs: what it does, changeable while it runs.

:class:`EmulatorKnobs` is deliberately mutable (unlike the sidecar's frozen
``Config``): a test, the CLI or ``GET /_emulator/knobs?name=value`` changes a
running emulator's behaviour. Every change goes through :meth:`EmulatorKnobs.update`
or :meth:`EmulatorKnobs.update_from_strings`, which validate names and values
and leave the knobs untouched when anything is wrong.

Defaults follow the official CosyVoice WebSocket page as
``docs/dashscope-protocol.md`` reports it (§15 lists every knob and the
source of its default); where the official sources disagree, a knob offers
each documented variant, and where they say nothing the default is the
conservative [EMU] choice named there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.protocol import INPUT_TIMEOUT_S, MAX_CHARS_PER_MESSAGE, MAX_CHARS_PER_TASK

__all__ = ["EmulatorKnobs", "KnobError"]

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_NONE: Final = frozenset({"", "none", "null", "any"})


class KnobError(ValueError):
    """Raised when a knob name is unknown or its value is invalid. The caller's fault."""


@dataclass
class EmulatorKnobs:
    """How the emulator behaves; read at the moment each behaviour happens.

    Times are seconds unless the name says ``_ms``. Every ``*_every`` knob
    acts on each Nth task (by the emulator-wide ordinal of run-tasks that
    passed validation, 1-based); 0 turns it off.
    """

    # Handshake (§2): None accepts any non-empty Bearer key.
    api_keys: frozenset[str] | None = None
    handshake_delay_s: float = 0.0
    # Task timing (§7): before task-started, before the first audio frame.
    start_delay_s: float = 0.0
    first_packet_delay_s: float = 0.0
    # Audio pacing: 0 sends as fast as possible, 1.0 at real-time pace,
    # 0.25 four times faster than real time.
    realtime_factor: float = 0.0
    chunk_ms: int = 100
    # Audio duration per counted character (§4.2 counting rule), at rate 1.0.
    ms_per_character: float = 60.0
    # Connection and task timeouts (§7).
    idle_timeout_s: float = 60.0
    drop_idle_silently: bool = False
    input_timeout_s: float = INPUT_TIMEOUT_S
    # Throttling (§9): beyond this many running tasks, Throttling.RateQuota.
    max_concurrent_tasks: int | None = None
    # Injected faults.
    fail_start_every: int = 0
    fail_mid_every: int = 0
    fail_code: str = "InternalError"
    # "" sends the message the service sends with fail_code (codes.message_for).
    fail_message: str = ""
    drop_mid_every: int = 0
    close_after_failure: bool = True
    # Rejections (§9: InvalidParameter, "[tts:]Engine return error code: 418").
    rejected_voices: frozenset[str] = field(default_factory=lambda: frozenset({"bad-voice"}))
    rejected_models: frozenset[str] = field(default_factory=frozenset)
    # Text limits (§4.2).
    max_chars_per_message: int = MAX_CHARS_PER_MESSAGE
    max_chars_per_task: int = MAX_CHARS_PER_TASK
    # Cancel directive (§4.4); when False the directive is ignored and the
    # task finishes normally (what an unsupported cancel does is unconfirmed).
    cancel_supported: bool = True
    # Where the documented variants of §6 go. usage.characters: in each
    # sentence-end, in task-finished, or both (the WebSocket page shows both).
    usage_in: str = "both"
    # Word timings (word_timestamp_enabled): the WebSocket page puts them in
    # task-finished only, the server-events page in sentence-end.
    words_in: str = "task-finished"
    # task-finished's words: "last", the documented one-object
    # payload.output.sentence (which can hold one sentence: the task's last),
    # or "all", every sentence in a list payload.output.sentences (no
    # official source shows it; the client accepts it).
    finished_sentences: str = "last"
    # Sentence-level begin_time/end_time (ms from the task's first audio) on
    # the sentence objects that carry words (the Java SDK's Sentence has them).
    sentence_times: bool = False
    # header.attributes.request_uuid in task-finished (the WebSocket page).
    request_uuid: bool = True
    # An event no client knows, sent before the first sentence of every Nth task.
    unknown_event_every: int = 0
    unknown_event_name: str = "task-progress"
    # A run-task while a task runs (§7): "interrupt" ends the running task
    # without another event for it (documented: a new run-task interrupts),
    # "finish-old" ends it with task-finished first, "fail" answers
    # task-failed InvalidParameter (the emulator's earlier [EMU] choice).
    run_task_while_running: str = "interrupt"
    # error_code of the 23 s input timeout: samples show CLIENT_ERROR, the
    # error-code page lists the message under InvalidParameter.
    input_timeout_code: str = "CLIENT_ERROR"
    # Throttling.BurstRate when task starts ramp faster than a token bucket
    # allows: burst_starts_per_s tokens a second, at most burst_size saved.
    burst_starts_per_s: float = 0.0
    burst_size: int = 10
    # Close with 1007 on a client message with a field outside the envelope
    # the official SDKs send (the WebSocket page's FAQ: 1007 for fields the
    # server does not expect).
    reject_unexpected_fields: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`KnobError` naming the first knob whose value is invalid."""
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise KnobError(f"{name} must be a finite number >= 0, not {value!r}")
        for name in _POSITIVE:
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise KnobError(f"{name} must be a finite number > 0, not {value!r}")
        for name in _COUNTS:
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise KnobError(f"{name} must be an integer >= 0, not {value!r}")
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise KnobError(f"{name} must be an integer >= 1, not {value!r}")
        if self.max_concurrent_tasks is not None and (
            not _is_int(self.max_concurrent_tasks) or self.max_concurrent_tasks < 0
        ):
            raise KnobError(
                f"max_concurrent_tasks must be None or an integer >= 0, "
                f"not {self.max_concurrent_tasks!r}"
            )
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise KnobError(f"{name} must be a bool")
        for name in _STRINGS:
            if not isinstance(getattr(self, name), str):
                raise KnobError(f"{name} must be a string")
        for name in _STRING_SETS:
            value = getattr(self, name)
            if value is None and name == "api_keys":
                continue
            if not isinstance(value, frozenset) or not all(isinstance(v, str) for v in value):
                raise KnobError(f"{name} must be a frozenset of strings")
        if self.api_keys is not None and "" in self.api_keys:
            raise KnobError("api_keys must not contain an empty key")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise KnobError(
                    f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
                )
        for name in ("unknown_event_name", "input_timeout_code"):
            if not getattr(self, name):
                raise KnobError(f"{name} must not be empty")

    def update(self, **changes: Any) -> None:
        """Apply ``changes`` all at once, or none of them if any is invalid.

        Raises :class:`KnobError` for an unknown name or an invalid value.
        Sets and lists of strings are turned into frozensets.
        """
        unknown = sorted(set(changes) - _NAMES)
        if unknown:
            raise KnobError(f"unknown knob {unknown[0]!r}; known: {', '.join(sorted(_NAMES))}")
        normalized: dict[str, Any] = {
            name: (frozenset(v) if name in _STRING_SETS and isinstance(v, list | set) else v)
            for name, v in changes.items()
        }
        candidate = dataclasses.replace(self, **normalized)  # runs validate()
        for name in normalized:
            setattr(self, name, getattr(candidate, name))

    def update_from_strings(self, changes: Mapping[str, str]) -> None:
        """Apply knob changes given as strings (query parameters, CLI values).

        Booleans are ``true/false/1/0/yes/no/on/off``; sets are comma-separated;
        ``api_keys`` and ``max_concurrent_tasks`` take ``none`` (or an empty
        value) for "no limit". Raises :class:`KnobError` naming the knob at fault.
        """
        self.update(**{name: _parse(name, text) for name, text in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        """Return the knobs as JSON-ready values; API keys are masked."""
        result: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "api_keys":
                value = None if value is None else sorted(_mask(k) for k in value)
            elif isinstance(value, frozenset):
                value = sorted(value)
            result[f.name] = value
        return result

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={self.to_dict()[f.name]!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != _DEFAULTS[f.name]
        ]
        return f"<EmulatorKnobs {' '.join(changed) or 'defaults'}>"


_NON_NEGATIVE: Final = (
    "handshake_delay_s",
    "start_delay_s",
    "first_packet_delay_s",
    "realtime_factor",
    "burst_starts_per_s",
)
_POSITIVE: Final = ("ms_per_character", "idle_timeout_s", "input_timeout_s")
_COUNTS: Final = ("fail_start_every", "fail_mid_every", "drop_mid_every", "unknown_event_every")
_POSITIVE_INTS: Final = ("chunk_ms", "max_chars_per_message", "max_chars_per_task", "burst_size")
_BOOLS: Final = (
    "drop_idle_silently",
    "close_after_failure",
    "cancel_supported",
    "sentence_times",
    "request_uuid",
    "reject_unexpected_fields",
)
_CHOICES: Final = {
    "usage_in": ("sentence-end", "task-finished", "both"),
    "words_in": ("sentence-end", "task-finished", "both"),
    "finished_sentences": ("last", "all"),
    "run_task_while_running": ("interrupt", "finish-old", "fail"),
}
_STRINGS: Final = (
    "fail_code",
    "fail_message",
    "unknown_event_name",
    "input_timeout_code",
    *_CHOICES,
)
_STRING_SETS: Final = ("api_keys", "rejected_voices", "rejected_models")
_NAMES: Final = frozenset(f.name for f in dataclasses.fields(EmulatorKnobs))


def _parse(name: str, text: str) -> Any:
    if name not in _NAMES:
        raise KnobError(f"unknown knob {name!r}; known: {', '.join(sorted(_NAMES))}")
    lowered = text.strip().lower()
    try:
        if name in _BOOLS:
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(text)
        if name in _STRINGS:
            return text
        if name in _STRING_SETS:
            if name == "api_keys" and lowered in _NONE:
                return None
            return frozenset(part.strip() for part in text.split(",") if part.strip())
        if name == "max_concurrent_tasks":
            return None if lowered in _NONE else int(lowered)
        if name in _COUNTS or name in _POSITIVE_INTS:
            return int(lowered)
        return float(lowered)
    except ValueError:
        raise KnobError(f"invalid value {text!r} for knob {name!r}") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mask(key: str) -> str:
    return key[:3] + "***" if len(key) > 6 else "***"


_DEFAULTS: Final = {
    f.name: getattr(EmulatorKnobs(), f.name) for f in dataclasses.fields(EmulatorKnobs)
}

"""Text as DashScope counts and accepts it (§4.2): limits, counting, splitting, task ids."""

from __future__ import annotations

import re
import uuid
from typing import Final

__all__ = [
    "INPUT_TIMEOUT_S",
    "MAX_CHARS_PER_MESSAGE",
    "MAX_CHARS_PER_TASK",
    "MAX_INSTRUCTION_CHARS",
    "count_characters",
    "new_task_id",
    "split_text",
    "strip_ssml",
]

MAX_CHARS_PER_MESSAGE: Final = 20_000
MAX_CHARS_PER_TASK: Final = 200_000
# run-task's ``instruction``, counted like text (§5): longer ones fail the task
# with "[tts:]Engine return error code: 428".
MAX_INSTRUCTION_CHARS: Final = 100
INPUT_TIMEOUT_S: Final = 23.0

_SSML_TAG = re.compile(r"<[^<>]*>")
# Where a long fragment may be cut (§4.2 lets fragments end anywhere, but a cut
# at a sentence end, then at a space, keeps the server's segmentation natural).
_SENTENCE_END = re.compile(r"[.!?;。！？；…\n]+[\"'”’)）]*\s*")
_SPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------
# Counting and splitting text (§4.2)
# --------------------------------------------------------------------------

# CJK Unified Ideographs and extensions, plus compatibility ideographs.
_CJK_RANGES: Final = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2EBEF),
    (0x2F800, 0x2FA1F),
    (0x30000, 0x323AF),
)


def _is_cjk_ideograph(ch: str) -> bool:
    code = ord(ch)
    if code < 0x3400:
        return False
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def strip_ssml(text: str) -> str:
    """Return ``text`` without its SSML tags (what DashScope counts and speaks)."""
    return _SSML_TAG.sub("", text)


def count_characters(text: str, *, ssml: bool = False) -> int:
    """Return the length of ``text`` as DashScope counts it.

    Each CJK ideograph counts 2, every other character 1; with ``ssml``, tags
    do not count (§4.2).
    """
    if ssml:
        text = strip_ssml(text)
    return len(text) + sum(1 for ch in text if _is_cjk_ideograph(ch))


def split_text(text: str, limit: int = MAX_CHARS_PER_MESSAGE) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` counted characters.

    Cuts after the last sentence end that fits, else after the last space,
    else at the limit itself; joining the pieces gives ``text`` back exactly.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2 (one CJK ideograph)")
    pieces: list[str] = []
    rest = text
    while count_characters(rest) > limit:
        cut = _prefix_fitting(rest, limit)
        window = rest[:cut]
        boundary = _last_boundary(_SENTENCE_END, window) or _last_boundary(_SPACE, window)
        if boundary:
            cut = boundary
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


def _prefix_fitting(text: str, limit: int) -> int:
    """Return the longest prefix length of ``text`` whose count is <= limit."""
    total = 0
    for i, ch in enumerate(text):
        total += 2 if _is_cjk_ideograph(ch) else 1
        if total > limit:
            return i
    return len(text)


def _last_boundary(pattern: re.Pattern[str], window: str) -> int:
    ends = [m.end() for m in pattern.finditer(window)]
    return ends[-1] if ends else 0


def new_task_id() -> str:
    """Return a fresh task id: 32 hex characters, as the Python SDK makes them (§3)."""
    return uuid.uuid4().hex

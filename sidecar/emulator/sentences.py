"""Sentence segmentation of a task's text stream, as the server does it (§4.2).

Text arrives in fragments that need not be whole sentences. A sentence ends
after a run of sentence-ending punctuation (``。`` and ``.!?;`` in their ASCII
and full-width forms) or newlines; a
complete sentence is synthesised at once, an incomplete tail waits for more
text, a flush, or finish-task.

Every character the client sends is billed (§4.2 counting rule), including
whitespace between sentences; :class:`Sentence` carries the counted
characters it consumed so usage totals add up to the text sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sidecar.protocol import Phoneme, Word, count_characters

__all__ = ["Sentence", "SentenceSplitter", "split_sentences", "strip_ssml", "word_timings"]

# Ideographic full stop; full-width and ASCII "!?;"; ASCII "."; newline.
_ENDS: Final = "\u3002\uff01\uff1f\uff1b.!?;\n"
_ENDS_RUN: Final = re.compile(f"[{_ENDS}]+")
_SSML_TAG: Final = re.compile(r"<[^<>]*>")
# A word: one CJK ideograph, or a run of other non-space characters.
_WORD: Final = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]|"
    r"[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+"
)


@dataclass(frozen=True)
class Sentence:
    """One sentence to synthesise.

    ``text`` is the sentence without surrounding whitespace (the
    ``original_text`` of its events); ``characters`` is what the text it
    consumed counts, including whitespace-only segments skipped before it.
    """

    text: str
    characters: int


class SentenceSplitter:
    """Buffers a task's text and cuts complete sentences out of it."""

    def __init__(self) -> None:
        self._tail = ""
        self._skipped = 0  # counted characters of skipped blank segments

    @property
    def tail(self) -> str:
        """The incomplete text waiting for more input."""
        return self._tail

    def feed(self, text: str) -> list[Sentence]:
        """Add ``text``; return the sentences it completes."""
        segments, rest = split_sentences(text)  # the tail holds no sentence end
        if segments:
            segments[0] = self._tail + segments[0]
            self._tail = rest
        else:
            self._tail += rest
        return self._collect(segments)

    def flush(self) -> list[Sentence]:
        """Return the buffered tail as a sentence (flush, finish-task)."""
        tail, self._tail = self._tail, ""
        return self._collect([tail] if tail else [])

    def _collect(self, segments: list[str]) -> list[Sentence]:
        sentences = []
        for segment in segments:
            self._skipped += count_characters(segment)
            text = segment.strip()
            if text:
                sentences.append(Sentence(text, self._skipped))
                self._skipped = 0
        return sentences


def split_sentences(text: str) -> tuple[list[str], str]:
    """Split ``text`` into complete raw segments and the incomplete tail.

    Joining the segments and the tail gives ``text`` back exactly.
    """
    segments = []
    start = 0
    for run in _ENDS_RUN.finditer(text):  # linear: long text without an end is common
        segments.append(text[start : run.end()])
        start = run.end()
    return segments, text[start:]


def strip_ssml(text: str) -> str:
    """Remove SSML tags; what remains is what is spoken and counted (§4.2)."""
    return _SSML_TAG.sub("", text)


def word_timings(sentence: str, duration_ms: int, *, phonemes: bool = False) -> tuple[Word, ...]:
    """Return word timings for ``sentence`` spread over ``duration_ms``.

    Each word gets time in proportion to its counted characters; indexes are
    0-based character offsets into ``sentence``, ``end_index`` exclusive (§6).
    With ``phonemes``, each word's characters are its phonemes, sharing its
    time equally; an ideograph gets a tone 1-4 from its code point, other
    characters none ([EMU]: placeholders of the documented shape).
    """
    matches = list(_WORD.finditer(sentence))
    total = sum(count_characters(m.group()) for m in matches)
    words = []
    elapsed = 0
    for m in matches:
        begin = elapsed * duration_ms // total
        elapsed += count_characters(m.group())
        end = elapsed * duration_ms // total
        parts = _phonemes(m.group(), begin, end) if phonemes else ()
        words.append(Word(m.group(), m.start(), m.end(), begin, end, parts))
    return tuple(words)


def _phonemes(word: str, begin: int, end: int) -> tuple[Phoneme, ...]:
    n = len(word)
    return tuple(
        Phoneme(
            ch,
            str(ord(ch) % 4 + 1) if count_characters(ch) == 2 else "",
            begin + i * (end - begin) // n,
            begin + (i + 1) * (end - begin) // n,
        )
        for i, ch in enumerate(word)
    )

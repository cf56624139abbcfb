"""What of a caller's text goes upstream, and when (docs/dashscope-protocol.md §4.2).

DashScope bills every character it is sent and fails a task whose text is
empty, so text that has nothing to speak must never reach it on its own:

* a fragment with no letter or digit (empty, spaces, a lone punctuation
  mark) is *held*, not sent: it is put in front of the next fragment that has
  something to speak, so the text DashScope sees is exactly the caller's
  (``"Hello"`` + ``" "`` + ``"world."`` still reads ``"Hello world."``);
* at finish, held text is sent only if something was sent before (a closing
  ``"."`` ends the last sentence); a stream that never had anything to speak
  sends nothing at all, and its call ends with no audio and nothing billed;
* a fragment longer than DashScope's 20,000-character message limit is split
  at a sentence or word boundary; SSML is sent whole, in exactly one message
  (§5: ``enable_ssml`` allows one continue-task);
* the whole stream may carry at most 200,000 counted characters.

Nothing here does I/O: :class:`TextFeed` returns the messages to send.
"""

from __future__ import annotations

from sidecar import protocol
from sidecar.errors import InvalidRequest

__all__ = ["TextFeed", "speakable"]


def speakable(text: str) -> bool:
    """Return True if ``text`` has something to speak: a letter or a digit."""
    return any(ch.isalnum() for ch in text)


class TextFeed:
    """The text of one call, fragment by fragment; see the module docstring."""

    def __init__(self, *, ssml: bool) -> None:
        self._ssml = ssml
        self._held = ""  # fragments with nothing to speak, waiting for one that has
        self._counted = 0  # counted characters accepted so far (sent or held)
        self.fragments_sent = 0

    @property
    def sent_any(self) -> bool:
        """Whether any text went upstream."""
        return self.fragments_sent > 0

    def take(self, fragment: str) -> list[str]:
        """Accept one fragment; return the continue-task texts to send now (maybe none).

        Raises :class:`InvalidRequest` when the stream would break a limit.
        """
        count = protocol.count_characters(fragment, ssml=self._ssml)
        total = self._counted + count
        if total > protocol.MAX_CHARS_PER_TASK:
            raise InvalidRequest(
                "text",
                f"the stream would carry {total:,} characters, over DashScope's "
                f"{protocol.MAX_CHARS_PER_TASK:,}-character task limit (CJK ideographs count 2)",
            )
        if self._ssml:
            return self._take_ssml(fragment, count)
        self._counted = total
        if not speakable(fragment):
            self._held += fragment
            return []
        text, self._held = self._held + fragment, ""
        self.fragments_sent += 1
        return protocol.split_text(text, protocol.MAX_CHARS_PER_MESSAGE)

    def tail(self) -> list[str]:
        """At finish: the held text to send, if anything was sent before it.

        Held text has nothing to speak, but it may still be over the message
        limit (20,001 punctuation marks once answered INTERNAL): it is split too.
        """
        held, self._held = self._held, ""
        if not (held and self.sent_any):
            return []
        return protocol.split_text(held, protocol.MAX_CHARS_PER_MESSAGE)

    def _take_ssml(self, fragment: str, count: int) -> list[str]:
        if self.fragments_sent or self._held:
            raise InvalidRequest("text", "SSML allows exactly one text fragment per stream")
        if count > protocol.MAX_CHARS_PER_MESSAGE:
            raise InvalidRequest(
                "text",
                f"SSML text of {count} characters is over the "
                f"{protocol.MAX_CHARS_PER_MESSAGE:,}-character message limit",
            )
        self._counted += count
        if not speakable(protocol.strip_ssml(fragment)):
            self._held = fragment
            return []
        self.fragments_sent += 1
        return [fragment]

"""What a call hands its writer, in upstream order, through one small bounded queue.

Commands go in (:class:`Text`, :class:`Flush`, :class:`Finish`); events come
out of :class:`CallEvents`:

* audio: the upstream frame's ``bytes`` themselves (most events are audio, so
  a frame is not wrapped);
* :class:`Sentence`: one sentence's timing, when it ends;
* :data:`FLUSHED`: a flush went upstream, acknowledged in order with the audio;
* :data:`FINISHED`: the task finished and every event before it is queued;
* an error, handed to the writer (which raises it) after what was queued
  before it (:meth:`CallEvents.put_error`), or at once (:meth:`CallEvents.fail`).

The queue is small on purpose: when the caller reads slowly it fills, the
call stops reading the upstream socket, websockets stops reading TCP after a
few frames, and DashScope is pushed back. A stream's memory stays bounded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from sidecar.protocol import Word

__all__ = [
    "FINISHED",
    "FLUSHED",
    "CallEvent",
    "CallEvents",
    "Command",
    "Finish",
    "Finished",
    "Flush",
    "Flushed",
    "Sentence",
    "Text",
]

# Events between the call's pumps and its writer; with websockets' own frame
# queue this bounds a stream's memory when its caller stops reading.
_SIZE: Final = 4


@dataclass(frozen=True, slots=True)
class Text:
    """A caller's text fragment."""

    text: str


@dataclass(frozen=True, slots=True)
class Flush:
    """The caller asks for the buffered text to be synthesized now."""


@dataclass(frozen=True, slots=True)
class Finish:
    """The caller has no more text."""


Command = Text | Flush | Finish


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence's timing, as DashScope segmented the text (times in ms)."""

    index: int
    text: str
    words: tuple[Word, ...] = ()
    begin_ms: int | None = None
    end_ms: int | None = None


class Flushed:
    """A flush went upstream."""

    __slots__ = ()


class Finished:
    """The task finished: every event of the call has been queued."""

    __slots__ = ()


FLUSHED: Final = Flushed()
FINISHED: Final = Finished()

CallEvent = bytes | Sentence | Flushed | Finished


class CallEvents:
    """The bounded, ordered queue from a call's pumps to its writer."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[CallEvent | BaseException] = asyncio.Queue(_SIZE)

    def __repr__(self) -> str:
        return f"<CallEvents queued={self._queue.qsize()}>"

    # ------------------------------------------------------------ the pumps' side

    def full(self) -> bool:
        """Whether :meth:`put` would wait (the caller is behind)."""
        return self._queue.full()

    async def put(self, event: CallEvent) -> None:
        """Queue an event, waiting while the queue is full."""
        await self._queue.put(event)

    def put_nowait(self, event: CallEvent) -> None:
        """Queue an event; only after :meth:`full` said there is room."""
        self._queue.put_nowait(event)

    async def put_error(self, error: BaseException) -> None:
        """Queue an error after what is queued: :meth:`get` raises it in its turn.

        What the upstream sent before it failed still reaches the caller.
        """
        await self._queue.put(error)

    def fail(self, error: BaseException) -> None:
        """Drop every event not yet taken; the next :meth:`get` raises ``error``. Never blocks.

        For an end decided outside the call (shutdown, a stalled caller, a
        reclaimed lease): what the caller already received is a clean prefix
        of the audio, and nothing queued after it matters any more.
        """
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(error)

    # ----------------------------------------------------------- the writer's side

    async def get(self) -> CallEvent | BaseException:
        """Return the next event, or a queued error (to raise). Cancelling it loses no event."""
        return await self._queue.get()

    def get_nowait(self) -> CallEvent | BaseException | None:
        """Return the next event or queued error if one is queued, else None."""
        if self._queue.empty():
            return None
        return self._queue.get_nowait()

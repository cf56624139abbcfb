"""How long a call waits for its upstream: the first audio, each next frame, task-finished.

Before the caller's first flush or finish, upstream silence is legitimate
(DashScope waits for a sentence to end, and the caller-idle bound covers the
caller). From then on:

* the first audio frame must come within ``first_audio_s``;
* after finish, ``task-finished`` must come within ``finish_s``, and once
  audio flows, each frame within ``stall_s`` of the one before.

These bounds measure the upstream only. While the caller leaves its audio
unread, the call stops reading the upstream (backpressure: TCP pushes back on
DashScope), so the upstream's silence is the caller's doing: the deadlines are
:meth:`~UpstreamDeadlines.pause`\\ d, and on :meth:`~UpstreamDeadlines.resume`
the first-audio and finish deadlines move by the time paused and the stall
deadline starts afresh. A caller that stays away too long meets its own bound
(``--caller-read-timeout``), with a status that blames it.

Frames arrive every few tens of milliseconds, each moving the stall deadline,
so one lazy :class:`Watchdog` carries whichever
deadline is nearest and moving it is an assignment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.call._watchdog import Watchdog
from sidecar.errors import UpstreamTimeout

__all__ = ["UpstreamDeadlines"]


class UpstreamDeadlines:
    """The deadlines of one upstream task; ``on_overdue`` runs when one passes."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        first_audio_s: float,
        stall_s: float,
        finish_s: float,
        on_overdue: Callable[[], None],
    ) -> None:
        # The loop is passed in: on CPython 3.11 looking it up is a system call,
        # and the deadline moves with every upstream frame.
        self._loop = loop
        self._first_audio_s = first_audio_s
        self._stall_s = stall_s
        self._finish_s = finish_s
        self._watchdog = Watchdog(on_overdue)
        self._audio_started = False
        self._first_audio_at: float | None = None
        self._finish_at: float | None = None
        self._paused_at: float | None = None
        # Both pumps may wait on the caller at once (the reader with audio, the feeder
        # with a flush acknowledgement): the clock restarts only when neither does.
        self._pauses = 0

    def synthesis_requested(self) -> None:
        """A flush or finish went upstream: from now on, audio must start in time."""
        if self._first_audio_at is None and not self._audio_started:
            self._first_audio_at = self._loop.time() + self._first_audio_s
        self._arm()

    def finish_sent(self) -> None:
        """Finish went upstream: task-finished must follow in time."""
        self._finish_at = self._loop.time() + self._finish_s
        self.synthesis_requested()

    def audio_started(self) -> None:
        """The first audio frame arrived."""
        self._audio_started = True

    def frame_received(self) -> None:
        """An upstream frame arrived: move the deadline for the next one."""
        self._arm()

    def pause(self) -> None:
        """The caller holds the audio back: stop counting the upstream's time.

        Pauses nest: each :meth:`pause` needs its own :meth:`resume`."""
        self._pauses += 1
        if self._paused_at is None:
            self._paused_at = self._loop.time()
            self._watchdog.set(None)

    def resume(self) -> None:
        """The caller reads again: once no one waits on it, deadlines move by the time paused."""
        if self._pauses == 0:
            return
        self._pauses -= 1
        if self._pauses or self._paused_at is None:
            return
        paused = self._loop.time() - self._paused_at
        self._paused_at = None
        if self._first_audio_at is not None:
            self._first_audio_at += paused
        if self._finish_at is not None:
            self._finish_at += paused
        self._arm()

    def cancel(self) -> None:
        """Stop watching for good."""
        self._watchdog.cancel()

    def error(self) -> UpstreamTimeout:
        """The error for the deadline that passed."""
        if self._finish_at is not None and self._loop.time() >= self._finish_at:
            what = f"no task-finished within {self._finish_s:g}s after finish"
        elif not self._audio_started:
            what = f"no audio within {self._first_audio_s:g}s after flush/finish"
        else:
            what = f"upstream stalled for {self._stall_s:g}s between frames"
        return UpstreamTimeout(what)

    def _arm(self) -> None:
        if self._paused_at is not None:
            return
        deadline = None if self._audio_started else self._first_audio_at
        if self._finish_at is not None:
            deadline = min(deadline or self._finish_at, self._finish_at)
            if self._audio_started:
                deadline = min(deadline, self._loop.time() + self._stall_s)
        self._watchdog.set(deadline)

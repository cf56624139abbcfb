"""One lazy timer for a deadline that moves often.

A task's upstream frames arrive every few tens of milliseconds, and each one
moves the deadline by which the next must come. Creating a timer (or an
``asyncio.timeout``) per frame is measurable on the hot path; a
:class:`Watchdog` makes moving the deadline an assignment, and its single
timer re-arms itself when it fires before the (moved) deadline. Only a
deadline moved *earlier* than the timer costs a new timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Watchdog"]


class Watchdog:
    """Calls ``on_expire`` once the loop time passes the deadline set last."""

    def __init__(self, on_expire: Callable[[], None]) -> None:
        self._on_expire = on_expire
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def set(self, deadline: float | None) -> None:
        """Move the deadline (loop time), or clear it with None; never blocks.

        Moving it later is an assignment (the timer re-arms when it fires);
        moving it earlier than the timer re-arms the timer, or an earlier
        deadline would only be noticed at the later one.
        """
        self._deadline = deadline
        if deadline is None:
            return
        if self._timer is not None:
            if deadline >= self._timer.when():
                return
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def cancel(self) -> None:
        """Stop watching for good."""
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # moved since the timer was set
            self._timer = loop.call_at(self._deadline, self._fire)
            return
        self._deadline = None
        self._on_expire()

"""One clock for every paced audio frame the emulator sends.

At 400 concurrent streams with a frame every 25 ms, the emulator sends some
16,000 frames a second. Waking a coroutine for each frame (a timer, a future,
a task step, the coroutine stack) cost more CPU than building and writing the
frame. :class:`Pacer` keeps the due times of all tasks in one heap and runs
their callbacks from a single asyncio timer, set to the earliest due time
rounded up to :data:`TICK_S`: the frames of every task that fall due within
one tick go out in one turn of the event loop.

A callback runs at or after its due time, never before, and at most about one
tick late on an idle loop; callers schedule against absolute times so lateness
never accumulates.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Final

__all__ = ["TICK_S", "Pacer"]

TICK_S: Final = 0.001


class Pacer:
    """Runs ``callback(arg)`` at loop time ``when``; bound to the running loop on first use.

    There is no cancel: a caller that no longer wants a callback ignores it
    (pass a generation number as ``arg`` and compare).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[int], None], int]] = []
        self._order = itertools.count()  # ties run in the order they were scheduled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._running = False

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[int], None], arg: int) -> None:
        heapq.heappush(self._heap, (when, next(self._order), callback, arg))
        if not self._running:  # else _run arms the timer when it is done
            self._arm(when)

    def _arm(self, when: float) -> None:
        at = math.ceil(when / TICK_S) * TICK_S
        if at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._run)

    def _run(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._timer_at = math.inf
        self._running = True
        heap = self._heap
        now = self._loop.time()
        try:
            while heap and heap[0][0] <= now:
                _, _, callback, arg = heapq.heappop(heap)
                try:
                    callback(arg)
                except Exception as exc:  # noqa: BLE001 - one task must not stop the others
                    self._loop.call_exception_handler(
                        {"message": "emulator pacer callback failed", "exception": exc}
                    )
        finally:
            self._running = False
            if heap:
                self._arm(heap[0][0])

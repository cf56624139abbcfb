"""The calls waiting for a connection while every one is busy, first come, first served.

A connection that comes back is handed straight to the oldest waiter still
waiting. Handing over and giving up can cross: a caller may time out or be
cancelled in the very step its connection was handed over. The connection
is then given back, never lost, so the pool's counts stay right.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from sidecar.upstream import UpstreamConnection

__all__ = ["Waiters"]


class Waiters:
    """A FIFO of calls waiting for a connection."""

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[UpstreamConnection]] = deque()

    def __repr__(self) -> str:
        return f"<Waiters {len(self)}>"

    def __len__(self) -> int:
        """The calls still waiting (not those already served, failed or gone)."""
        return sum(1 for waiter in self._queue if not waiter.done())

    async def wait(
        self, timeout: float, give_back: Callable[[UpstreamConnection], None]
    ) -> UpstreamConnection:
        """Wait up to ``timeout`` seconds for a connection handed over by :meth:`hand_over`.

        Raises TimeoutError, the error given to :meth:`fail_all`, or
        CancelledError; in each case a connection handed over meanwhile goes
        to ``give_back``.
        """
        waiter: asyncio.Future[UpstreamConnection] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except BaseException:
            if waiter in self._queue:
                self._queue.remove(waiter)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                give_back(waiter.result())
            raise

    def hand_over(self, connection: UpstreamConnection) -> bool:
        """Give ``connection`` to the oldest waiting call; return False if none waits."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def fail_all(self, error: BaseException) -> None:
        """End every wait with ``error``."""
        for waiter in self._queue:
            if not waiter.done():
                waiter.set_exception(error)
        self._queue.clear()

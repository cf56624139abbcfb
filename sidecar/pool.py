"""The pool of warm upstream connections.

Three nouns, as in httpcore: the pool (this module) lends connections
(``sidecar.upstream``) to calls (``sidecar.servicer``). Every change of the
pool's state happens in one synchronous step between awaits (asyncio runs one
step at a time, so no lock is needed); the I/O that follows (opening,
closing) runs in tasks outside that step, shielded from the caller's
cancellation, so a caller that hangs up never leaves the counts wrong.

Invariants, asserted by the tests after every cancellation scenario:

* ``idle + busy + opening <= max_size``: never more sockets than the quota.
* a connection is in at most one of idle / busy; a closed one is in neither.
* the pool only reads :attr:`UpstreamConnection.reusable` to decide between
  idle and close; it never re-derives the reuse rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sidecar.errors import PoolClosed, PoolExhausted, UpstreamAuthError, UpstreamError
from sidecar.upstream import UpstreamConnection

__all__ = ["Borrowed", "Pool", "PoolStatus"]

log = logging.getLogger(__name__)

Connector = Callable[[], Awaitable[UpstreamConnection]]

# Background reconnect pauses: exponential, capped, so a dead upstream is
# probed a few times a minute at most instead of in a tight loop.
_BACKOFF_INITIAL_S = 0.2
_BACKOFF_MAX_S = 10.0


@dataclass(frozen=True)
class Borrowed:
    """A connection on loan, with how it was obtained (for Started and telemetry)."""

    connection: UpstreamConnection
    warm: bool  # True: it was idle and open already; False: opened for this call
    wait_ms: float


@dataclass(frozen=True)
class PoolStatus:
    """A read-only snapshot of the pool's counts."""

    idle: int
    busy: int
    opening: int
    closing: int
    waiters: int
    max_size: int
    min_idle: int


class Pool:
    """Warm DashScope connections, at most ``max_size``, ``min_idle`` kept spare.

    The pool keeps at least ``min_idle`` connections open (more while more are
    busy), capped at ``max_size``; connections are opened in parallel in the
    background whenever the pool is below that target, e.g. after a failed
    task's connection was discarded. A connection on loan counts as coming
    back, so sequential calls reuse the same warm sockets and open none.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        min_idle: int,
        max_size: int,
        acquire_timeout: float,
    ) -> None:
        if not 0 <= min_idle <= max_size or max_size < 1:
            raise ValueError("need 0 <= min_idle <= max_size and max_size >= 1")
        self._connector = connector
        self.min_idle = min_idle
        self.max_size = max_size
        self.acquire_timeout = acquire_timeout
        self._idle: deque[UpstreamConnection] = deque()
        self._busy: set[UpstreamConnection] = set()
        self._opening = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._waiters: deque[asyncio.Future[UpstreamConnection]] = deque()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._backoff_s = 0.0
        self._retry_handle: asyncio.TimerHandle | None = None
        self._warm = asyncio.Event()
        self.last_error: UpstreamError | None = None

    # ------------------------------------------------------------------ status

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"<Pool idle={s.idle} busy={s.busy} opening={s.opening} closing={s.closing} "
            f"waiters={s.waiters} max={s.max_size}>"
        )

    def status(self) -> PoolStatus:
        return PoolStatus(
            idle=len(self._idle),
            busy=len(self._busy),
            opening=self._opening,
            closing=len(self._closing),
            waiters=sum(1 for w in self._waiters if not w.done()),
            max_size=self.max_size,
            min_idle=self.min_idle,
        )

    @property
    def ready(self) -> bool:
        """Return True once ``min_idle`` connections have been warm at the same time."""
        return self._warm.is_set() and not self._closed

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :attr:`ready`; return whether it is."""
        try:
            async with asyncio.timeout(timeout):
                await self._warm.wait()
        except TimeoutError:
            pass
        return self.ready

    # --------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Begin warming ``min_idle`` connections in parallel (returns at once)."""
        if self.min_idle == 0:
            self._warm.set()
        self._replenish()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close every connection with code 1000 and wait for the closes (bounded)."""
        self._closed = True
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed("the sidecar is shutting down"))
        self._waiters.clear()
        for task in list(self._background):
            task.cancel()
        while self._idle:
            self._close(self._idle.popleft())
        for connection in list(self._busy):
            # Calls still running get a transport error, which is the truth.
            self._close(connection)
        pending = self._closing | self._background
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                log.warning("pool shutdown: %d closes did not finish in %.1fs", len(still), timeout)

    # ----------------------------------------------------------------- lending

    async def acquire(self, timeout: float | None = None) -> Borrowed:
        """Borrow a connection, waiting in FIFO order for at most ``timeout`` seconds.

        Raises :class:`PoolExhausted` when none frees up in time,
        :class:`PoolClosed` during shutdown, and the upstream's error when a
        connection opened for this call fails to open.
        """
        if self._closed:
            raise PoolClosed("the sidecar is shutting down")
        started = time.monotonic()
        connection = self._take_idle()
        if connection is not None:
            return self._lend(connection, warm=True, started=started)
        if self._total() < self.max_size:
            return await self._open_for_caller(started)
        bound = self.acquire_timeout if timeout is None else min(timeout, self.acquire_timeout)
        waiter: asyncio.Future[UpstreamConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(bound):
                connection = await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed over just as this caller timed out or was cancelled: give it back.
                self.release(waiter.result())
            if isinstance(exc, TimeoutError):
                raise PoolExhausted(
                    f"all {self.max_size} upstream connections stayed busy for {bound:g}s",
                    retry_after_s=1.0,
                ) from exc
            raise
        return self._lend(connection, warm=True, started=started, handed=True)

    def release(self, connection: UpstreamConnection) -> None:
        """Return a borrowed connection: to the next waiter or idle if reusable, else close it."""
        if connection not in self._busy:
            return
        self._busy.discard(connection)
        if self._closed or not connection.reusable:
            self._close(connection)
        elif not self._hand_to_waiter(connection):
            self._idle.append(connection)
        self._replenish()

    # ------------------------------------------------------------- internals

    def _total(self) -> int:
        return len(self._idle) + len(self._busy) + self._opening

    def _take_idle(self) -> UpstreamConnection | None:
        while self._idle:
            connection = self._idle.popleft()  # FIFO: the longest idle first, kept fresh
            if connection.reusable:
                return connection
            log.info("discarding stale idle %r", connection)
            self._close(connection)
        return None

    def _lend(
        self,
        connection: UpstreamConnection,
        *,
        warm: bool,
        started: float,
        handed: bool = False,
    ) -> Borrowed:
        if not handed:
            self._busy.add(connection)
        self._replenish()
        return Borrowed(connection, warm=warm, wait_ms=(time.monotonic() - started) * 1000)

    async def _open_for_caller(self, started: float) -> Borrowed:
        self._opening += 1
        opener = asyncio.ensure_future(self._connector())
        try:
            # Shielded: if the caller is cancelled, the opening finishes in the
            # background and the connection joins the pool instead of leaking.
            connection = await asyncio.shield(opener)
        except asyncio.CancelledError:
            opener.add_done_callback(self._adopt_opened)
            raise
        except UpstreamError as exc:
            self._opening -= 1
            self._note_failure(exc)
            raise
        self._opening -= 1
        self._note_success()
        return self._lend(connection, warm=False, started=started)

    def _adopt_opened(self, opener: asyncio.Future[UpstreamConnection]) -> None:
        self._opening -= 1
        if opener.cancelled() or opener.exception() is not None:
            return
        self._accept_new(opener.result())

    def _accept_new(self, connection: UpstreamConnection) -> None:
        """Place a freshly opened connection: to a waiter, else idle (or close if shut)."""
        if self._closed or not connection.reusable:
            self._close(connection)
            return
        if not self._hand_to_waiter(connection):
            self._idle.append(connection)
        if len(self._idle) >= self.min_idle:
            self._warm.set()

    def _hand_to_waiter(self, connection: UpstreamConnection) -> bool:
        """Give ``connection`` to the first caller still waiting; it becomes busy."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._busy.add(connection)
                waiter.set_result(connection)
                return True
        return False

    def _replenish(self) -> None:
        """Open connections in the background up to the target (see the class docstring)."""
        if self._closed or self._retry_handle is not None:
            return
        target = min(max(self.min_idle, len(self._busy)) + self._live_waiters(), self.max_size)
        for _ in range(target - self._total()):
            self._opening += 1
            task = asyncio.get_running_loop().create_task(self._open_in_background())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _live_waiters(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def _open_in_background(self) -> None:
        try:
            connection = await self._connector()
        except UpstreamError as exc:
            self._opening -= 1
            self._note_failure(exc)
            return
        except asyncio.CancelledError:
            self._opening -= 1
            raise
        self._opening -= 1
        self._note_success()
        self._accept_new(connection)

    def _note_success(self) -> None:
        self._backoff_s = 0.0
        self.last_error = None

    def _note_failure(self, exc: UpstreamError) -> None:
        self.last_error = exc
        if isinstance(exc, UpstreamAuthError):
            log.error("upstream refused the API key: %s", exc)
        else:
            log.warning("upstream connect failed: %s", exc)
        if self._closed or self._retry_handle is not None:
            return
        self._backoff_s = min(max(self._backoff_s * 2, _BACKOFF_INITIAL_S), _BACKOFF_MAX_S)
        self._retry_handle = asyncio.get_running_loop().call_later(self._backoff_s, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        self._replenish()

    def _close(self, connection: UpstreamConnection) -> None:
        task = asyncio.get_running_loop().create_task(connection.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

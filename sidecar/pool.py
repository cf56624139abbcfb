"""The pool of warm upstream connections.

Three nouns, as in httpcore: the pool (this module) lends connections
(``sidecar.upstream``) to calls (``sidecar.session``) as leases. Every change
of the pool's state happens in one synchronous step between awaits (asyncio
runs one step at a time, so no lock is needed): :meth:`Pool._tick` decides
what to open, renew, shrink, reclaim and close; the I/O that follows runs in
tasks outside that step (connects in :mod:`sidecar.opener`), shielded from
callers' cancellation, so a caller that hangs up never leaves the counts wrong.

Policies (defaults in :class:`PoolPolicy`, each a ``serve`` option):

* **Sizing**: at most ``max_size`` sockets, ever (it is the account's
  concurrency quota). ``min_idle`` warm spares are kept *above* the number in
  use (target = busy + min_idle, capped), so a burst finds warm sockets;
  spares beyond the target are closed after ``shrink_after`` seconds idle.
* **Warm-up** in parallel, after one first connect has proven the key and
  the upstream; pacing, backoff and the refused-key breaker are the
  :class:`~sidecar.connect_gate.ConnectGate`'s.
* **Renewal, make-before-break**: an idle socket due for renewal
  (:mod:`sidecar.idle`) gets its replacement opened first; only then is it
  closed with code 1000. With no room under ``max_size`` it is closed first.
* **Staleness**: a socket the server closed is seen without a round trip
  (its state) and discarded at borrow time.
* **Leases**: a borrowed socket whose call shows no activity for
  ``lease_stall`` seconds is reclaimed (closed, its call ended). Calls that
  find every socket busy wait in FIFO order (:mod:`sidecar.waiters`).

Invariants, asserted by the tests after every cancellation scenario:
``idle + busy + opening <= max_size``; a connection is in at most one of idle /
busy; the pool reads :attr:`UpstreamConnection.reusable` and never re-derives
the reuse rule.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable

from sidecar.connect_gate import ConnectGate
from sidecar.errors import PoolClosed, PoolExhausted, UpstreamAuthError, UpstreamError
from sidecar.idle import IdleConnections
from sidecar.lease import Lease
from sidecar.opener import Connector, Opener
from sidecar.pool_policy import PoolPolicy, PoolStatus
from sidecar.telemetry import Telemetry
from sidecar.upstream import UpstreamConnection
from sidecar.waiters import Waiters

__all__ = ["Lease", "Pool", "PoolPolicy", "PoolStatus"]

log = logging.getLogger(__name__)


class Pool:
    """Warm DashScope connections; see the module docstring for the policies."""

    def __init__(
        self,
        connector: Connector,
        policy: PoolPolicy,
        *,
        key_changed: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._connector = connector
        self.policy = policy
        self._key_changed = key_changed
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._telemetry = telemetry or Telemetry.disabled()
        self._idle = IdleConnections(policy, self._rng)
        self._busy: dict[UpstreamConnection, Lease] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._waiters = Waiters()
        self._gate = ConnectGate(policy, self._rng)
        self._opener = Opener(
            connector,
            self._gate,
            self._telemetry,
            opened=self._opened,
            failed=self._open_failed,
        )
        self._warmed_once = False
        self._ready_changed = asyncio.Event()
        self._closed = False
        self._maintainer: asyncio.Task[None] | None = None
        self._closed_total: Counter[str] = Counter()
        self._stale_retries = 0

    # ------------------------------------------------------------------ status

    @property
    def min_idle(self) -> int:
        return self.policy.min_idle

    @property
    def max_size(self) -> int:
        return self.policy.max_size

    @property
    def last_error(self) -> UpstreamError | None:
        """Why the last connect failed, until one succeeds."""
        return self._gate.last_error

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
            opening=self._opener.opening,
            closing=len(self._closing),
            waiters=len(self._waiters),
            max_size=self.max_size,
            min_idle=self.min_idle,
            ready=self.ready,
            breaker_open=self._gate.key_refused,
            last_error=str(self.last_error) if self.last_error else "",
            opened_total=self._opener.opened_total,
            closed_total=dict(self._closed_total),
            stale_retries=self._stale_retries,
        )

    @property
    def ready(self) -> bool:
        """Return True while the pool can serve warm: health SERVING.

        False before ``min_idle`` sockets were first warm, while the key is
        refused, and while the upstream cannot be reached and fewer than
        ``min_idle`` sockets are open; a routine replacement does not flap it.
        """
        if self._closed or self._gate.key_refused or not self._warmed_once:
            return False
        return self._gate.failures == 0 or len(self._idle) + len(self._busy) >= self.min_idle

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :attr:`ready`; return whether it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ready:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._ready_changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._ready_changed.wait()
            except TimeoutError:
                return self.ready
        return True

    def note_stale_retry(self) -> None:
        """Count a call transparently retried on a fresh socket after a stale one failed."""
        self._stale_retries += 1

    # --------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Begin warming up and maintaining the pool (returns at once)."""
        if self.min_idle == 0:
            self._warmed_once = True
        self._tick()
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain())

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close every connection with code 1000 and wait for the closes (bounded)."""
        self._closed = True
        self._signal_ready()
        if self._maintainer is not None:
            self._maintainer.cancel()
        self._waiters.fail_all(PoolClosed("the sidecar is shutting down"))
        for task in list(self._opener.tasks):
            task.cancel()
        while (connection := self._idle.pop_newest()) is not None:
            self._close(connection, "shutdown")
        for connection in list(self._busy):
            # Calls still running get a transport error, which is the truth.
            self._close(connection, "shutdown")
        pending = self._closing | self._opener.tasks
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                log.warning("pool shutdown: %d closes did not finish in %.1fs", len(still), timeout)

    # ----------------------------------------------------------------- lending

    async def acquire(self, timeout: float | None = None, *, fresh: bool = False) -> Lease:
        """Borrow a connection, waiting in FIFO order for at most ``timeout`` seconds.

        ``fresh`` skips idle sockets (a retry after a stale one). Raises
        :class:`PoolExhausted` when none frees up in time,
        :class:`PoolClosed` during shutdown, :class:`UpstreamAuthError` while
        the key is refused, and the upstream's error when a connection opened
        for this call fails.
        """
        if self._closed:
            raise PoolClosed("the sidecar is shutting down")
        if self._gate.auth_error is not None:
            raise self._gate.auth_error
        started = time.monotonic()
        bound = (
            self.policy.acquire_timeout
            if timeout is None
            else min(timeout, self.policy.acquire_timeout)
        )
        connection = None if fresh else self._take_idle()
        if connection is not None:
            return self._lend(connection, warm=True, started=started)
        if self._total() < self.max_size:
            connection = await self._opener.for_caller(bound)
            self._note_success()
            return self._lend(connection, warm=False, started=started)
        try:
            connection = await self._waiters.wait(bound, give_back=self.release)
        except TimeoutError as exc:
            raise PoolExhausted(
                f"all {self.max_size} upstream connections stayed busy for {bound:g}s",
                retry_after_s=1.0,
            ) from exc
        lease = self._busy[connection]
        lease.wait_ms = (time.monotonic() - started) * 1000
        return lease

    def release(self, connection: UpstreamConnection) -> None:
        """Return a borrowed connection: to the next waiter or idle if reusable, else close it."""
        if self._busy.pop(connection, None) is None:
            return
        if self._closed or not connection.reusable:
            self._close(connection, "failed")
        else:
            self._make_idle(connection)
        self._replenish()

    # ------------------------------------------------------------ the one step

    def _tick(self) -> None:
        """Decide and start everything the pool should do now (no awaiting).

        Runs every ``tick`` seconds: the scans over every connection (stale,
        stalled, shrink, renew) live here, so lending and returning stay
        constant-time and only call :meth:`_replenish`.
        """
        if self._closed:
            return
        now = time.monotonic()
        if self._key_changed():
            self._gate.key_changed()
        self._drop_stale_idle()
        self._reclaim_stalled_leases(now)
        self._shrink(now, self._target())
        self._renew(now)
        self._replenish(now)

    def _target(self) -> int:
        return min(len(self._busy) + self.min_idle + len(self._waiters), self.max_size)

    def _replenish(self, now: float | None = None) -> None:
        """Start the connects that bring the pool up to its target (no scans)."""
        if self._closed:
            return
        now = time.monotonic() if now is None else now
        if self._gate.key_refused:
            if self._opener.opening == 0 and self._gate.may_probe(now):
                self._opener.start(reason="probe")
            return
        if not self._gate.may_connect(now):
            return
        deficit = self._target() - self._total()
        if self._opener.opened_total == 0 or self._gate.failures:
            # Until a connect has succeeded (first start, upstream down, a key
            # not yet proven), one attempt at a time: a bad key or a dead
            # upstream costs one handshake per backoff step, never a storm.
            deficit = min(deficit, 1 - self._opener.opening)
        for _ in range(deficit):
            self._opener.start(reason="warm")

    def _drop_stale_idle(self) -> None:
        for connection in [c for c in self._idle if not c.reusable]:
            self._idle.remove(connection)
            log.info("discarding %r: the server closed it while idle", connection)
            self._close(connection, "stale")

    def _reclaim_stalled_leases(self, now: float) -> None:
        limit = self.policy.lease_stall
        for connection, lease in list(self._busy.items()):
            if now - lease.last_activity > limit:
                log.warning("reclaiming %r: its call showed no activity for %gs", connection, limit)
                del self._busy[connection]
                self._close(connection, "reclaimed")
                if lease.on_reclaim is not None:
                    lease.on_reclaim()

    def _shrink(self, now: float, target: int) -> None:
        excess = len(self._idle) + len(self._busy) - target
        while excess > 0:
            oldest = self._idle.pop_oldest_idle_for(now, self.policy.shrink_after)
            if oldest is None:
                break
            self._close(oldest, "shrunk")
            excess -= 1

    def _renew(self, now: float) -> None:
        for connection in self._idle.due_for_renewal(now):
            if self._total() < self.max_size and not self._gate.key_refused:
                self._idle.start_renewal(connection)  # make before break
                self._opener.start(reason="renewal", replaces=connection)
            else:
                self._idle.remove(connection)  # no room under the quota: break, then make
                self._close(connection, "renewed")

    # -------------------------------------------------------------- internals

    def _total(self) -> int:
        return len(self._idle) + len(self._busy) + self._opener.opening

    def _take_idle(self) -> UpstreamConnection | None:
        while (connection := self._idle.pop_newest()) is not None:
            if connection.reusable:
                return connection
            log.info("discarding %r: the server closed it while idle", connection)
            self._close(connection, "stale")
        return None

    def _lend(self, connection: UpstreamConnection, *, warm: bool, started: float) -> Lease:
        lease = Lease(connection, warm=warm, wait_ms=(time.monotonic() - started) * 1000)
        self._busy[connection] = lease
        self._replenish()
        return lease

    def _make_idle(self, connection: UpstreamConnection) -> None:
        """Hand a reusable connection to the first waiter, else put it idle."""
        if self._waiters.hand_over(connection):
            # The waiter resumes later and reads its lease (and wait time) from here.
            self._busy[connection] = Lease(connection, warm=True, wait_ms=0.0)
            return
        self._idle.push(connection, time.monotonic())

    def _opened(self, connection: UpstreamConnection, replaces: UpstreamConnection | None) -> None:
        """A background connect (or one its caller gave up on) succeeded."""
        self._note_success()
        if replaces is not None and self._idle.end_renewal(replaces):
            # Still idle: the replacement takes its place.
            self._idle.remove(replaces)
            self._close(replaces, "renewed")
        self._accept_new(connection)

    def _open_failed(self, exc: UpstreamError, replaces: UpstreamConnection | None) -> None:
        if replaces is not None:
            self._idle.end_renewal(replaces)
        self._note_failure(exc)

    def _accept_new(self, connection: UpstreamConnection) -> None:
        """Place a freshly opened connection: to a waiter, else idle (or close if shut)."""
        if self._closed or not connection.reusable:
            self._close(connection, "shutdown" if self._closed else "stale")
            return
        self._make_idle(connection)
        if len(self._idle) >= self.min_idle and not self._warmed_once:
            self._warmed_once = True
        self._signal_ready()
        self._replenish()

    def _note_success(self) -> None:
        self._gate.succeeded()
        self._signal_ready()

    def _note_failure(self, exc: UpstreamError) -> None:
        self._gate.failed(exc, time.monotonic())
        if isinstance(exc, UpstreamAuthError):
            self._waiters.fail_all(exc)
        self._signal_ready()

    def _signal_ready(self) -> None:
        self._ready_changed.set()

    def _close(self, connection: UpstreamConnection, reason: str) -> None:
        self._closed_total[reason] += 1
        task = asyncio.get_running_loop().create_task(connection.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _maintain(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.policy.tick)
            try:
                self._tick()
            except Exception:
                log.exception("pool maintenance failed; continuing")

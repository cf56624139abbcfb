"""The pool of warm upstream connections: the thin I/O layer around the plan.

Three nouns, as in httpcore: the pool lends connections
(:mod:`sidecar.upstream`) to calls as leases. Every change of the pool's state
happens in one synchronous step between awaits (asyncio runs one step at a
time, so no lock is needed): the periodic :meth:`Pool._tick` asks
:func:`~sidecar.pool._plan.plan` what to open, renew, shrink, reclaim and
close, and applies the answer; lending and returning only replenish. The I/O
that follows (closes, and connects in :mod:`sidecar.pool._opener`) runs in
tasks outside that step, shielded from callers' cancellation, so a caller that
hangs up never leaves the counts wrong.

:meth:`Pool.lease` is how a call uses the pool: borrow, start the task (once
more, skipping idle sockets and within the same bound, if a pooled one turns
out dead before ``task-started``), and on exit give the connection back, kept
only if its task reached ``task-finished``. A task still running when its call ends is stopped
by closing the socket, the documented way to interrupt a task
(docs/dashscope-protocol.md §7); the pool opens a replacement as usual.

Invariants, asserted by the tests after every cancellation scenario:
``idle + busy + opening <= max_size``; a connection is in at most one of idle /
busy; the pool reads :attr:`UpstreamConnection.reusable` and never re-derives
the reuse rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

from sidecar.errors import (
    PoolClosed,
    PoolExhausted,
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailable,
)
from sidecar.fleet import FleetQuota
from sidecar.pool._gate import ConnectGate
from sidecar.pool._idle import IdleConnections
from sidecar.pool._lease import Lease
from sidecar.pool._opener import Connector, Opener
from sidecar.pool._plan import Busy, GateView, Idle, Plan, View, plan, replenish, target
from sidecar.pool._policy import PoolPolicy, PoolStatus
from sidecar.pool._waiters import Waiters
from sidecar.telemetry import Telemetry
from sidecar.upstream import UpstreamConnection, UpstreamTask

__all__ = ["Begin", "Pool"]

log = logging.getLogger(__name__)

# Starts a call's task on a borrowed connection (sends run-task, awaits task-started).
Begin = Callable[[Lease], Awaitable[UpstreamTask]]


class Pool:
    """Warm DashScope connections; see the module docstring and :mod:`sidecar.pool._plan`."""

    def __init__(
        self,
        connector: Connector,
        policy: PoolPolicy,
        *,
        key_changed: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
        fleet: FleetQuota | None = None,
    ) -> None:
        self.policy = policy
        self._fleet = fleet
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
        self._published = self.status()

    # ------------------------------------------------------------------ status

    def __repr__(self) -> str:
        return repr(self.status())

    def status(self) -> PoolStatus:
        """Return the counts now (on the event loop), and publish them for other threads."""
        self._published = PoolStatus(
            idle=len(self._idle),
            busy=len(self._busy),
            opening=self._opener.opening,
            closing=len(self._closing),
            waiters=len(self._waiters),
            max_size=self.policy.max_size,
            min_idle=self.policy.min_idle,
            ready=self.ready,
            breaker_open=self._gate.key_refused,
            last_error=str(self._gate.last_error) if self._gate.last_error else "",
            opened_total=self._opener.opened_total,
            closed_total=dict(self._closed_total),
            stale_retries=self._stale_retries,
            fleet=self._fleet.status() if self._fleet is not None else None,
        )
        return self._published

    @property
    def published(self) -> PoolStatus:
        """The counts as of the last maintenance step (at most ``tick_s`` old).

        One immutable snapshot swapped in by the event loop: reading it from
        another thread (the metrics exporter's) is safe.
        """
        return self._published

    @property
    def ready(self) -> bool:
        """Return True while the pool can serve warm (the upstream health).

        False before ``min_idle`` sockets were first warm, while the key is
        refused, and while the upstream cannot be reached and fewer than
        ``min_idle`` sockets are open; a routine replacement does not flap it.
        """
        if self._closed or self._gate.key_refused or not self._warmed_once:
            return False
        open_now = len(self._idle) + len(self._busy)
        return self._gate.failures == 0 or open_now >= self.policy.min_idle

    @property
    def warmed_once(self) -> bool:
        """Return True once ``min_idle`` connections were open at the same time."""
        return self._warmed_once

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

    # --------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Begin warming up and maintaining the pool (returns at once)."""
        if self.policy.min_idle == 0:
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
        busy, self._busy = self._busy, {}
        for connection in busy:
            # Calls still running get a transport error, which is the truth. The
            # connection is no longer the pool's: its return (release) is a no-op.
            self._close(connection, "shutdown")
        pending = self._closing | self._opener.tasks
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                log.warning("pool shutdown: %d closes did not finish in %.1fs", len(still), timeout)
        self.status()

    # ----------------------------------------------------------------- lending

    @contextlib.asynccontextmanager
    async def lease(self, timeout: float | None, begin: Begin) -> AsyncIterator[Lease]:
        """Borrow a connection, ``begin`` the call's task on it, and give it back on exit.

        A pooled socket can die unseen (a silent drop, a close racing the
        borrow). If ``begin`` fails with :class:`UpstreamUnavailable`, nothing
        reached the caller yet, so the borrow is retried once (counted in
        ``stale_retries``), skipping the idle sockets, which may be as dead: on
        a connection opened for it, or, when the pool is full, on the first one
        another call gives back. The whole borrow, retry included, keeps to
        one bound (``timeout``, at most ``acquire_timeout_s``); with none of it
        left, the first failure is raised. Any later failure is the call's,
        never retried (audio may have gone out). On exit a task that
        has not ended is stopped by closing its socket, and the connection
        goes back through :meth:`release`. Raises what :meth:`acquire` and
        ``begin`` raise.
        """
        lease = await self._begin_on_lease(timeout, begin)
        error: BaseException | None = None
        try:
            yield lease
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._give_back(lease, error)

    async def _begin_on_lease(self, timeout: float | None, begin: Begin) -> Lease:
        # One bound for the whole borrow: the retry gets what is left of it.
        deadline = time.monotonic() + self._bound(timeout)
        for attempt in (1, 2):
            with self._telemetry.borrow(self.status) as borrow:
                lease = await self.acquire(deadline - time.monotonic(), fresh=attempt > 1)
                borrow.borrowed(
                    connection_id=lease.connection.id, warm=lease.warm, wait_ms=lease.wait_ms
                )
                if self._fleet is not None:
                    await self._take_slot(lease, deadline - time.monotonic())
                    assert lease.slot is not None
                    borrow.fleet(wait_ms=lease.slot.wait_s * 1000, enforced=lease.slot.enforced)
            try:
                lease.task = await begin(lease)
            except UpstreamUnavailable as exc:
                self._give_back(lease, exc)
                if attempt > 1 or deadline - time.monotonic() <= 0:
                    raise  # the retry's turn, or no time left for one
                self._stale_retries += 1
                log.info("%s; retrying once, skipping idle connections", exc)
            except BaseException as exc:
                self._give_back(lease, exc)
                raise
            else:
                return lease
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _take_slot(self, lease: Lease, bound: float) -> None:
        """Take a fleet quota slot for the lease's task, within what is left of the bound.

        The connection waits unused meanwhile; if no slot comes, it goes back
        to the pool as it was (warm sockets hold no slot).
        """
        assert self._fleet is not None
        try:
            lease.slot = await self._fleet.acquire(max(bound, 0.0))
        except BaseException:
            self.release(lease.connection)
            raise

    def _give_back(self, lease: Lease, error: BaseException | None) -> None:
        """Stop the lease's task if it is still running, then return the connection, traced."""
        task = lease.task
        cancelled = task is not None and not task.state.is_over
        if task is not None:
            task.abandon()  # closes the socket unless task-finished arrived
        if lease.slot is not None:
            lease.slot.release()  # the task ended, or its socket is closing
        connection = lease.connection
        with self._telemetry.returning(
            connection.id,
            kept=connection.reusable,
            cancelled=cancelled,
            error=error,
            held_s=time.monotonic() - lease.borrowed_at,
        ):
            self.release(connection)

    async def acquire(self, timeout: float | None = None, *, fresh: bool = False) -> Lease:
        """Borrow a connection, waiting in FIFO order for at most ``timeout`` seconds.

        ``timeout`` is capped by ``acquire_timeout_s``; ``fresh`` skips idle
        sockets (a retry after a stale one). Raises :class:`PoolExhausted` when
        none frees up in time, :class:`PoolClosed` during shutdown,
        :class:`UpstreamAuthError` while the key is refused,
        :class:`UpstreamUnavailable` when it would have to connect while the
        upstream is unreachable (after a failed connect: during the backoff, or
        while another attempt is under way), and the upstream's error when a
        connection opened for this call fails.
        """
        if self._closed:
            raise PoolClosed("the sidecar is shutting down")
        if self._gate.auth_error is not None:
            raise self._gate.auth_error
        started = time.monotonic()
        bound = self._bound(timeout)
        connection = None if fresh else self._take_idle()
        if connection is not None:
            return self._lend(connection, warm=True, started=started)
        if self._total() < self.policy.max_size:
            self._check_reachable()
            connection = await self._opener.for_caller(bound)
            self._note_success()
            if self._closed:  # the shutdown began during the connect
                self._close(connection, "shutdown")
                raise PoolClosed("the sidecar is shutting down")
            return self._lend(connection, warm=False, started=started)
        try:
            connection = await self._waiters.wait(bound, give_back=self.release)
        except TimeoutError as exc:
            raise PoolExhausted(
                f"all {self.policy.max_size} upstream connections stayed busy for {bound:g}s",
                retry_after_s=1.0,
            ) from exc
        lease = self._busy.get(connection)
        if lease is None:  # handed over, then the shutdown closed it before this resumed
            raise PoolClosed("the sidecar is shutting down")
        lease.wait_ms = (time.monotonic() - started) * 1000
        return lease

    def _check_reachable(self) -> None:
        """Raise :class:`UpstreamUnavailable` if the caller may not connect for itself now.

        After a failed connect, a caller adds no handshake to the one attempt
        at a time the gate allows (a storm would only advance the backoff):
        it fails at once, UNAVAILABLE, which callers retry.
        """
        now = time.monotonic()
        gate = self._gate
        if gate.caller_may_connect(now, self._opener.opening):
            return
        retry_in = gate.retry_in(now)
        next_attempt = (
            f"the next attempt in {retry_in:.1f}s" if retry_in > 0 else "an attempt is under way"
        )
        raise UpstreamUnavailable(
            f"the upstream is unreachable (the last connect failed: {gate.last_error}); "
            f"{next_attempt}"
        ) from gate.last_error

    def _bound(self, timeout: float | None) -> float:
        """How long a call may wait for capacity: its own time left, at most acquire_timeout_s."""
        bound = self.policy.acquire_timeout_s
        return bound if timeout is None else min(timeout, bound)

    def release(self, connection: UpstreamConnection) -> None:
        """Return a borrowed connection: to the next waiter or idle if reusable, else close it."""
        if self._busy.pop(connection, None) is None:
            return
        if self._closed:
            self._close(connection, "shutdown")  # lent while the shutdown began
        elif not connection.reusable:
            self._close(connection, "failed")
        else:
            self._make_idle(connection)
        self._replenish()

    # ------------------------------------------------------------ the one step

    def _tick(self) -> None:
        """Plan and apply the periodic step (no awaiting)."""
        if self._closed:
            return
        now = time.monotonic()
        if self._key_changed():
            self._gate.key_changed()
        self._apply(plan(self._view(now), now), now)
        self.status()

    def _view(self, now: float) -> View[UpstreamConnection]:
        idle = self._idle
        return View(
            policy=self.policy,
            idle=[
                Idle(c, c.reusable, idle.idle_since(c), idle.renew_at(c), idle.renewing(c))
                for c in idle
            ],
            busy=[Busy(c, lease.last_activity) for c, lease in self._busy.items()],
            opening=self._opener.opening,
            waiters=len(self._waiters),
            gate=self._gate_view(now),
        )

    def _gate_view(self, now: float) -> GateView:
        gate = self._gate
        return GateView(
            key_refused=gate.key_refused,
            may_connect=gate.may_connect(now),
            probe_due=gate.probe_due(now),
            unproven=self._opener.opened_total == 0 or gate.failures > 0,
        )

    def _apply(self, step: Plan[UpstreamConnection], now: float) -> None:
        for connection, reason in step.close:
            self._idle.remove(connection)
            if reason == "stale":
                log.info("discarding %r: the server closed it while idle", connection)
            self._close(connection, reason)
        for connection in step.reclaim:
            lease = self._busy.pop(connection)
            log.warning(
                "reclaiming %r: its call showed no activity for %gs",
                connection,
                self.policy.lease_stall_s,
            )
            self._close(connection, "reclaimed")
            if lease.on_reclaim is not None:
                lease.on_reclaim()
        for connection in step.renew:
            self._idle.start_renewal(connection)
            self._opener.start(reason="renewal", replaces=connection)
        self._start_connects(step.open, step.probe, now)

    def _replenish(self) -> None:
        """Start the connects that bring the pool up to its target (constant time)."""
        if self._closed:
            return
        now = time.monotonic()
        opens, probe = replenish(
            wanted=target(self.policy, len(self._busy), len(self._waiters)),
            total=self._total(),
            opening=self._opener.opening,
            gate=self._gate_view(now),
        )
        self._start_connects(opens, probe, now)

    def _start_connects(self, opens: int, probe: bool, now: float) -> None:
        if probe:
            self._gate.probe_started(now)
            self._opener.start(reason="probe")
        for _ in range(opens):
            self._opener.start(reason="warm")

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
        if self._closed or not connection.reusable:
            self._close(connection, "shutdown" if self._closed else "stale")
            return
        self._make_idle(connection)
        if len(self._idle) >= self.policy.min_idle:
            self._warmed_once = True
        self._signal_ready()
        self._replenish()

    def _open_failed(self, exc: UpstreamError, replaces: UpstreamConnection | None) -> None:
        if replaces is not None:
            self._idle.end_renewal(replaces)
        self._gate.failed(exc, time.monotonic())
        if isinstance(exc, UpstreamAuthError):
            self._waiters.fail_all(exc)
        self._signal_ready()

    def _note_success(self) -> None:
        self._gate.succeeded()
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
            await asyncio.sleep(self.policy.tick_s)
            try:
                self._tick()
            except Exception:
                log.exception("pool maintenance failed; continuing")

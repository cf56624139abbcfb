"""FleetQuota: this process's end of one quota shared by a fleet through Redis.

Redis round trips, by design (``tests/fleet/test_round_trips.py`` counts them on
the server):

* borrow: one ``ACQUIRE``; plus one start-rate hit when ``start_rate`` is set. A
  call that must wait costs nothing more: the script that frees a slot hands it
  to the oldest ticket and publishes the grant on the waiter's channel.
* return: :meth:`FleetSlot.release` only notes the id; the renewer sends every
  id noted since its last round trip in one ``SYNC``, at once: at most one round
  trip per return, fewer under load.
* renewal: one ``SYNC`` per renew interval (TTL / 3) for every slot and ticket
  this process holds, however many.

Two background tasks: the *renewer* (every ``SYNC``; while Redis is down, the
probe) and the *listener* (the wake-up channel). Cancelling :meth:`acquire` at
any await never leaks: the ticket is given up at once in the ledger, and the
renewer tells Redis, whose tombstone keeps a script still in flight from
bringing it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, Final, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.backoff import backoff_delays
from sidecar.fleet._errors import FleetExhausted, FleetUnavailable
from sidecar.fleet._ledger import Ledger
from sidecar.fleet._link import RedisLink, keep_cancels
from sidecar.fleet._rate import StartRate
from sidecar.fleet._scripts import (
    ACQUIRE,
    SYNC,
    AcquireReply,
    FleetKeys,
    Summary,
    SyncReply,
    sync_args,
)
from sidecar.fleet._settings import FleetSettings, redact_text
from sidecar.fleet._slot import FleetSlot, FleetStatus

__all__ = ["FleetQuota"]

log = logging.getLogger("sidecar.fleet")

# Redis errors, and OSError for what redis-py lets through from sockets and TLS.
_REDIS_ERRORS: Final = (RedisError, OSError)
# The probe's backoff while Redis is down (seconds): quick first retries for a restart.
_PROBE_INITIAL_S: Final = 0.1
_PROBE_MAX_S: Final = 2.0
# A full SYNC for an expired lease runs this long after the lease's end (Redis's clock
# and ours tick at the same rate, but the reply took some time to come back).
_EXPIRY_SLACK_S: Final = 0.005
# The hold time assumed before any slot was returned (for the retry-after hint).
_DEFAULT_HOLD_S: Final = 1.0


class FleetQuota:
    """One fleet-wide quota of concurrent DashScope tasks, kept in Redis.

    ``FleetQuota(settings)`` does no I/O; :meth:`start` connects (never raising
    for an unreachable Redis: the policy applies), :meth:`aclose` gives back
    everything held.
    """

    def __init__(self, settings: FleetSettings, *, instance: str | None = None) -> None:
        self.settings = settings
        self._keys = FleetKeys(settings.key_prefix, settings.key)
        self._ledger = Ledger(settings.lease_ttl_s, time.monotonic, instance)
        self._link = RedisLink(settings, time.monotonic)
        self._state: Literal["new", "running", "closing", "closed"] = "new"
        self._client: Redis | None = None
        self._acquire_script: AsyncScript | None = None
        self._sync_script: AsyncScript | None = None
        self._rate: StartRate | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_now = asyncio.Event()
        self._full_sync_due = True
        self._last_full_sync = -float("inf")
        self._summary: Summary | None = None
        self._summary_at = 0.0
        self._adopted = 0
        self._round_trips = 0
        self._mean_hold_s: float | None = None
        self._quota_warned = False
        # Bound on one Redis operation: connect, command, and redis-py's single retry.
        self._op_timeout_s = 3 * settings.command_timeout_s

    def __repr__(self) -> str:
        s = self.status()
        fleet = "?" if s.fleet_in_use is None else str(s.fleet_in_use)
        return (
            f"<FleetQuota key={s.key} {'enforced' if s.enforced else 'NOT-enforced'} "
            f"held={s.held} waiting={s.waiting} fleet={fleet}/{s.quota} errors={s.redis_errors}>"
        )

    @property
    def instance(self) -> str:
        """This process's name in Redis: the first part of its slot ids."""
        return self._ledger.instance

    async def start(self) -> None:
        """Connect, probe Redis once, and start the renewer and the listener."""
        if self._state != "new":
            raise RuntimeError(f"FleetQuota.start() called in state {self._state}")
        s = self.settings
        pool = BlockingConnectionPool.from_url(
            s.redis_url,
            max_connections=s.redis_max_connections + 1,  # + the subscription's
            timeout=s.command_timeout_s,  # waiting for a free connection
            socket_timeout=s.command_timeout_s,
            socket_connect_timeout=s.command_timeout_s,
            # One immediate retry: a pooled connection may be stale after a Redis restart.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=max(1, int(s.renew_interval_s)),
            client_name=f"cosyvoice-fleet-{self.instance}",
        )
        self._client = Redis.from_pool(pool)
        self._acquire_script = self._client.register_script(ACQUIRE)
        self._sync_script = self._client.register_script(SYNC)
        if s.start_rate is not None:
            self._rate = StartRate(s.start_rate, pool, self._keys.starts_prefix)
        self._state = "running"
        await self._sync_once(full=True)  # the first probe: up or down, start goes on
        self._tasks = [
            asyncio.create_task(self._renew_loop(), name="fleet-renewer"),
            asyncio.create_task(self._listen_loop(), name="fleet-listener"),
        ]

    async def acquire(self, timeout_s: float) -> FleetSlot:
        """Take a fleet slot before a DashScope task starts; wait at most ``timeout_s``.

        Waiting is first come, first served across the fleet. Raises
        FleetExhausted (with a retry-after hint) at the deadline, FleetUnavailable
        when Redis is down and the policy is ``closed``; with ``open`` it returns an
        unenforced local slot instead. Cancellation at any point leaks nothing.
        """
        if self._state != "running":
            raise FleetUnavailable(f"the fleet quota is {self._state}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + max(0.0, timeout_s)
        if not self._link.up:
            return self._without_redis(started)
        ticket = self._ledger.new_id()
        granted = self._ledger.wait(ticket)
        rank = 0
        try:
            # timeout_s <= 0: one try, bounded by the Redis timeout only.
            async with asyncio.timeout_at(deadline if timeout_s > 0 else None):
                reply = AcquireReply.parse(
                    await self._run(self._acquire_script, self._args(ticket))
                )
                self._observe(reply.summary)
                rank = reply.rank
                if not reply.granted and timeout_s <= 0:
                    raise TimeoutError
                ok = reply.granted or await granted
        except TimeoutError as exc:
            self._ledger.release(ticket)
            self._sync_now.set()
            raise FleetExhausted(
                f"no fleet slot for key {self.settings.key!r} within {timeout_s:g}s "
                f"({rank} calls ahead in the fleet queue, quota {self.settings.quota})",
                self._retry_hint(rank),
            ) from exc
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            ok = False
        except BaseException:
            self._ledger.release(ticket)
            self._sync_now.set()
            raise
        if self._state != "running":
            self._ledger.release(ticket)
            raise FleetUnavailable("the fleet quota was closed while this call waited")
        if not ok:  # Redis went down while this call waited
            self._ledger.release(ticket)
            self._sync_now.set()
            return self._without_redis(started)
        slot = self._hold(ticket, enforced=True, started=started)
        if self._rate is not None:
            try:
                await self._take_start(deadline if timeout_s > 0 else None)
            except BaseException:
                slot.release()
                raise
        return slot

    def status(self) -> FleetStatus:
        """An immutable snapshot of the quota as this process sees it."""
        held = self._ledger.held
        summary = self._summary
        return FleetStatus(
            enforced=self._state == "running" and self._link.up,
            key=self.settings.key,
            quota=self.settings.quota,
            held=len(held),
            held_unenforced=sum(1 for enforced in held.values() if not enforced),
            waiting=len(self._ledger.waiting),
            fleet_in_use=None if summary is None else summary.in_use,
            fleet_waiting=None if summary is None else summary.queued,
            reclaimed=0 if summary is None else summary.reclaimed,
            adopted=self._adopted,
            redis_errors=self._link.errors,
            last_error=self._link.last_error,
            round_trips=self._round_trips + (self._rate.round_trips if self._rate else 0),
        )

    async def aclose(self) -> None:
        """Give back every slot and ticket (one last round trip, bounded), stop the tasks."""
        if self._state in ("closing", "closed"):
            return
        was_running = self._state == "running"
        self._state = "closing"
        self._ledger.fail_waiters()
        self._ledger.release_all()
        for task in self._tasks:
            task.cancel()
        # return_exceptions: the tasks' own CancelledError is expected; ours still raises.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if was_running and self._link.up and self._ledger.released:
            try:
                await self._sync(full=False)
            except _REDIS_ERRORS as exc:
                # Not returned: they expire in Redis within one lease TTL.
                log.warning(
                    "fleet quota: could not return %d slots on close (%s); they expire within %gs",
                    len(self._ledger.released),
                    redact_text(str(exc), self.settings.secrets),
                    self.settings.lease_ttl_s,
                )
        if self._client is not None:
            await self._client.aclose()
        self._state = "closed"

    # -- internals ---------------------------------------------------------------

    def _release(self, slot: FleetSlot) -> None:
        if self._ledger.release(slot.id):
            held_s = time.monotonic() - slot.acquired_at
            mean = self._mean_hold_s
            self._mean_hold_s = held_s if mean is None else 0.8 * mean + 0.2 * held_s
            self._sync_now.set()

    def _hold(self, slot_id: str, *, enforced: bool, started: float) -> FleetSlot:
        self._ledger.hold(slot_id, enforced=enforced)
        wait_s = asyncio.get_running_loop().time() - started
        return FleetSlot(slot_id, self._release, enforced=enforced, wait_s=wait_s)

    def _without_redis(self, started: float) -> FleetSlot:
        if self.settings.on_redis_down == "closed":
            raise FleetUnavailable(
                f"fleet quota for key {self.settings.key!r} cannot be enforced: Redis "
                f"unreachable ({self._link.last_error})"
            )
        return self._hold(self._ledger.new_id(), enforced=False, started=started)

    async def _take_start(self, deadline: float | None) -> None:
        """Wait for the start rate to allow one more task start, until ``deadline``
        (None: one try, bounded by the Redis timeout only, as :meth:`acquire` does)."""
        assert self._rate is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    wait_s = await self._bounded(self._rate.take())
            except TimeoutError as exc:
                raise FleetExhausted(
                    "fleet start rate: no answer before the deadline", 0.1
                ) from exc
            except _REDIS_ERRORS as exc:
                self._failed(exc)
                if self.settings.on_redis_down == "closed":
                    raise FleetUnavailable(
                        "fleet start rate cannot be enforced: Redis unreachable "
                        f"({self._link.last_error})"
                    ) from exc
                return
            if wait_s == 0.0:
                return
            if deadline is None or loop.time() + wait_s > deadline:
                raise FleetExhausted(
                    f"fleet start rate ({self._rate.amount} per {self._rate.seconds}s) spent "
                    "until past the deadline",
                    wait_s,
                )
            await asyncio.sleep(wait_s)

    def _args(self, *rest: str | int) -> list[str | int]:
        """ARGV of either script: quota, TTL in ms, the wake-up channel prefix, then ``rest``."""
        s = self.settings
        return [s.quota, int(s.lease_ttl_s * 1000), self._keys.wake_prefix, *rest]

    async def _run(self, script: AsyncScript | None, args: list[Any]) -> Any:
        assert script is not None
        self._round_trips += 1
        return await self._bounded(script(keys=self._keys.script_keys, args=args))

    async def _bounded(self, operation: Awaitable[Any]) -> Any:
        """Await one Redis operation for at most the operation bound (a Redis timeout)."""
        try:
            async with asyncio.timeout(self._op_timeout_s):
                return await keep_cancels(operation)
        except TimeoutError as exc:
            raise RedisTimeoutError(f"no answer from Redis within {self._op_timeout_s:g}s") from exc

    def _observe(self, summary: Summary) -> None:
        self._summary = summary
        self._summary_at = time.monotonic()
        if summary.stored_quota != self.settings.quota and not self._quota_warned:
            self._quota_warned = True
            log.warning(
                "fleet quota: another sidecar uses quota %d for key %r, this one %d; "
                "every sidecar sharing a key must use the same quota",
                summary.stored_quota,
                self.settings.key,
                self.settings.quota,
            )

    def _failed(self, exc: BaseException) -> None:
        if self._link.failed(exc):
            self._ledger.fail_waiters()
            self._sync_now.set()

    def _retry_hint(self, rank: int) -> float:
        """When a retry may find a slot: the calls ahead, served ``quota`` at a time, each
        for the mean hold time seen here. An estimate, bounded by the lease TTL."""
        hold = self._mean_hold_s if self._mean_hold_s is not None else _DEFAULT_HOLD_S
        estimate = hold * (max(rank, 0) + 1) / self.settings.quota
        return min(self.settings.lease_ttl_s, max(0.05, estimate))

    async def _sync(self, *, full: bool) -> None:
        snapshot = self._ledger.snapshot(full=full)
        if not (full or snapshot.released):
            return
        args = self._args(*sync_args(snapshot.released, snapshot.held, snapshot.waiting))
        started = time.monotonic()
        reply = SyncReply.parse(await self._run(self._sync_script, args))
        if full:
            self._last_full_sync = started
            self._full_sync_due = False
        self._ledger.synced(snapshot, reply.granted)
        self._observe(reply.summary)
        if reply.adopted:
            self._adopted += reply.adopted
            log.warning(
                "fleet quota: registered %d running tasks Redis did not know (Redis restarted "
                "or this process was cut off); the fleet may be over quota until they end",
                reply.adopted,
            )

    async def _sync_once(self, *, full: bool) -> bool:
        """One ``SYNC``; return True if Redis answered."""
        try:
            await self._sync(full=full or not self._link.up)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        # Recovered: the same full SYNC registered every slot held meanwhile.
        self._link.succeeded()
        return True

    def _next_full_sync(self) -> float:
        """When (monotonic) the next full ``SYNC`` is due: the renewal, or, while calls of
        this process wait, the moment the fleet's first lease runs out (to hand it on)."""
        due = self._last_full_sync + self.settings.renew_interval_s
        summary = self._summary
        if self._ledger.waiting and summary is not None and summary.next_expiry_ms >= 0:
            due = min(due, self._summary_at + summary.next_expiry_ms / 1000 + _EXPIRY_SLACK_S)
        return due

    async def _renew_loop(self) -> None:
        """Renew, return and probe: the only task that sends ``SYNC`` while running."""
        probes = backoff_delays(_PROBE_INITIAL_S, _PROBE_MAX_S)
        while True:
            if self._link.up:
                probes = backoff_delays(_PROBE_INITIAL_S, _PROBE_MAX_S)
                delay = self._next_full_sync() - time.monotonic()
                if delay > 0 and not self._ledger.released:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._sync_now.wait()
            else:
                # Down: probe on the backoff, not on every return (each would wait out
                # the timeout against a partitioned Redis).
                await asyncio.sleep(next(probes))
            self._sync_now.clear()
            full = self._full_sync_due or time.monotonic() >= self._next_full_sync()
            await self._sync_once(full=full)

    async def _listen_loop(self) -> None:
        """Hear grants on this process's wake-up channel; resubscribe after any failure."""
        assert self._client is not None
        channel = self._keys.wake_channel(self.instance)
        failures = backoff_delays(_PROBE_INITIAL_S, _PROBE_MAX_S)
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._bounded(pubsub.subscribe(channel))
                failures = backoff_delays(_PROBE_INITIAL_S, _PROBE_MAX_S)
                # Grants published while unsubscribed were missed: a full SYNC reports them.
                self._full_sync_due = True
                self._sync_now.set()
                while True:
                    message = await keep_cancels(
                        pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self.settings.renew_interval_s
                        )
                    )
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._ledger.granted(data.decode() if isinstance(data, bytes) else data)
            except _REDIS_ERRORS as exc:
                log.debug(
                    "fleet quota: wake-up subscription lost (%s)",
                    redact_text(str(exc), self.settings.secrets),
                )
                # Perhaps Redis is gone: a SYNC now tells, and the waiters learn it at once.
                self._full_sync_due = True
                self._sync_now.set()
            finally:
                with contextlib.suppress(*_REDIS_ERRORS):
                    await pubsub.aclose()
            await asyncio.sleep(next(failures))

"""One DashScope quota shared fairly by a fleet of sidecars, through Redis (off by default).

DashScope limits concurrency per root account and model, summed over every key
and workspace, and refuses fast ramps with ``Throttling.BurstRate`` (docs/dashscope-protocol.md
§13, §14). Sidecars that each believe ``--pool-max-size`` is the
account's quota start N times too many tasks together. Here every sidecar of a
fleet takes a *slot* in Redis before it starts a DashScope task and gives it
back when the task ends: at most ``quota`` tasks run fleet-wide, waiters are
served first come, first served across the fleet, and an optional start rate
paces task starts fleet-wide. See ``docs/fleet-quota.md``.

Public surface::

    quota = FleetQuota(settings)          # no I/O
    await quota.start()                   # connect, probe, start renewer + listener
    slot = await quota.acquire(timeout_s) # FleetSlot | FleetExhausted | FleetUnavailable
    slot.release()                        # sync, idempotent, never raises
    quota.status()                        # FleetStatus snapshot
    await quota.aclose()                  # give everything back, stop

How it is meant to be wired (by the integration, not done here):

* **config**: ``--fleet-redis-url`` (or a ``_FILE`` variable: the URL may carry a
  password, keep it out of ``ps``), ``--fleet-quota``, ``--fleet-key``,
  ``--fleet-start-rate``, ``--fleet-lease-ttl``, ``--fleet-on-redis-down``
  build one :class:`FleetSettings`; no URL means no fleet quota.
* **server**: one :class:`FleetQuota` per process, started after the pool and
  closed after it (its ``aclose`` returns slots of calls still running).
* **call**: take the slot *after* borrowing a warm connection and *before*
  sending ``run-task``, with the time left on the call's own acquire bound;
  release it when the task ends (finished, failed, cancelled) in the same
  ``finally`` that returns the connection. Idle warm sockets hold no slot, only
  running tasks do. ``FleetExhausted`` maps to RESOURCE_EXHAUSTED with a
  RetryInfo of ``retry_after_s``, like ``PoolExhausted``; ``FleetUnavailable``
  to UNAVAILABLE. The connection goes back to the pool unused in both cases.
* **GetStatus / health / telemetry**: :meth:`FleetQuota.status` has what to
  show (``enforced``, held, waiting, fleet in use, reclaimed, errors, last
  error without the password); a gauge of ``enforced`` is the "fleet quota not
  enforced" signal for alerts. Health stays SERVING when Redis is down with the
  ``open`` policy (the quota is degraded, calls work); with ``closed`` the
  integration may report NOT_SERVING while ``status().enforced`` is False.
* **bench**: several sidecars against one Redis and one emulator; the emulator's
  peak concurrent tasks must not exceed ``quota``.

::

    SidecarError
    └── FleetError
        ├── FleetExhausted     no slot (or start) within the caller's deadline
        └── FleetUnavailable   Redis down with policy "closed", or quota closed
"""

from __future__ import annotations

from sidecar.fleet._errors import FleetError, FleetExhausted, FleetUnavailable
from sidecar.fleet._quota import FleetQuota
from sidecar.fleet._settings import FleetSettings, redact_url
from sidecar.fleet._slot import FleetSlot, FleetStatus

__all__ = [
    "FleetError",
    "FleetExhausted",
    "FleetQuota",
    "FleetSettings",
    "FleetSlot",
    "FleetStatus",
    "FleetUnavailable",
    "redact_url",
]

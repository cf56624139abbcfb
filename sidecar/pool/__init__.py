"""The pool of warm DashScope connections.

Public face: :class:`Pool` (lend, return, maintain), :class:`Lease` (one
connection lent to one call), :class:`PoolPolicy` (every pool setting, one
definition) and :class:`PoolStatus` (the counts, one snapshot). Inside:

* ``_pool``: the I/O layer: lending, returning, the stale-socket retry of
  :meth:`Pool.lease`, applying the plan;
* ``_plan``: the periodic decisions as pure functions (open, close, renew,
  reclaim), tested without sockets;
* ``_idle`` (the idle stack and renewal deadlines), ``_waiters`` (calls waiting,
  FIFO), ``_lease``, ``_opener`` (paced, traced connects), ``_gate`` (whether
  connecting is allowed: pacing, backoff, the refused-key breaker, built on
  :mod:`sidecar.backoff`), ``_policy``.
"""

from __future__ import annotations

from sidecar.pool._lease import Lease
from sidecar.pool._opener import Connector
from sidecar.pool._policy import PoolPolicy, PoolStatus, option_name
from sidecar.pool._pool import Begin, Pool

__all__ = ["Begin", "Connector", "Lease", "Pool", "PoolPolicy", "PoolStatus", "option_name"]

"""The pool's idle connections: a stack, with when each went idle and is due for renewal.

Borrowing takes the most recently used socket (its TCP path is the surest to
be alive); the plan (:mod:`sidecar.pool._plan`) shrinks the longest idle ones. Each idle
socket's renewal deadline is drawn when it goes idle: ``max_idle_age``
(below DashScope's idle limit) or ``max_lifetime`` since it opened, whichever
comes first, both jittered down so renewals of a pool warmed at once spread
out. A socket whose replacement is being opened is *renewing*.

Whatever way a socket leaves (borrowed, closed, replaced), its bookkeeping
leaves with it: nothing here can outlive its place in the stack.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

from sidecar.pool._policy import PoolPolicy
from sidecar.upstream import UpstreamConnection

__all__ = ["IdleConnections"]


class IdleConnections:
    """Idle connections, oldest first; see the module docstring."""

    def __init__(self, policy: PoolPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng
        self._stack: deque[UpstreamConnection] = deque()  # the newest at the right end
        self._since: dict[UpstreamConnection, float] = {}
        self._renew_at: dict[UpstreamConnection, float] = {}
        self._renewing: set[UpstreamConnection] = set()

    def __repr__(self) -> str:
        return f"<IdleConnections {len(self._stack)} renewing={len(self._renewing)}>"

    def __len__(self) -> int:
        return len(self._stack)

    def __contains__(self, connection: object) -> bool:
        return connection in self._since

    def __iter__(self) -> Iterator[UpstreamConnection]:
        """Iterate over a snapshot, oldest first: callers may remove while iterating."""
        return iter(list(self._stack))

    def push(self, connection: UpstreamConnection, now: float) -> None:
        """Put a connection idle as the newest, and draw its renewal deadline."""
        self._stack.append(connection)
        self._since[connection] = now
        jitter = 1 - self._policy.age_jitter * self._rng.random()
        self._renew_at[connection] = min(
            now + self._policy.max_idle_age_s * jitter,
            connection.opened_at + self._policy.max_lifetime_s * jitter,
        )

    def pop_newest(self) -> UpstreamConnection | None:
        """Take the most recently used connection, or None if there is none."""
        if not self._stack:
            return None
        connection = self._stack.pop()
        self._forget(connection)
        return connection

    def remove(self, connection: UpstreamConnection) -> bool:
        """Take ``connection`` out; return False if it was not idle."""
        if connection not in self._since:
            return False
        self._stack.remove(connection)
        self._forget(connection)
        return True

    def idle_since(self, connection: UpstreamConnection) -> float:
        """When ``connection`` went idle (monotonic seconds)."""
        return self._since[connection]

    def renew_at(self, connection: UpstreamConnection) -> float:
        """When ``connection`` is due for renewal (monotonic seconds)."""
        return self._renew_at[connection]

    def renewing(self, connection: UpstreamConnection) -> bool:
        """Whether ``connection``'s replacement is being opened."""
        return connection in self._renewing

    def start_renewal(self, connection: UpstreamConnection) -> None:
        """Mark ``connection`` as renewing: its replacement is being opened."""
        self._renewing.add(connection)

    def end_renewal(self, connection: UpstreamConnection) -> bool:
        """Unmark ``connection``; return True if it was still idle and renewing."""
        if connection not in self._renewing:
            return False
        self._renewing.discard(connection)
        return True

    def _forget(self, connection: UpstreamConnection) -> None:
        del self._since[connection]
        del self._renew_at[connection]
        self._renewing.discard(connection)

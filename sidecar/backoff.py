"""Backoff as data and pure functions: how the pool paces its connects, and the
fleet quota its Redis reconnects.

* :func:`backoff_delays`: jittered exponential pauses between failed attempts.
* :class:`TokenBucket`: the connect rate limiter, so a cold start or a mass
  reconnect never becomes a storm against the upstream.
* :class:`Breaker`: stops connecting after a failure retrying cannot fix (a
  refused API key) and lets one probe through now and then.

Nothing here does I/O or reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Breaker", "TokenBucket", "backoff_delays"]


def backoff_delays(
    initial: float, maximum: float, rng: random.Random | None = None
) -> Iterator[float]:
    """Yield jittered pauses whose bound doubles from ``initial`` up to ``maximum``.

    Each pause is a uniform draw between half the bound and the bound ("equal
    jitter"): the first lies in [initial / 2, initial]. The jitter spreads the
    reconnects of many sidecars restarted together instead of aligning them;
    the half kept keeps a pause from collapsing to nothing.
    """
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    bound = initial
    while True:
        yield rng.uniform(bound / 2, bound)
        bound = min(bound * 2, maximum)


@dataclass
class TokenBucket:
    """Allows ``burst`` connects at once, then ``rate`` per second."""

    rate: float
    burst: float
    _tokens: float = field(default=0.0, repr=False)
    _updated: float | None = field(default=None, repr=False)

    def reserve(self, now: float) -> float:
        """Take one token; return how many seconds the caller must wait before using it.

        Tokens may go negative: each reservation queues behind the earlier ones.
        """
        if self._updated is None:  # first use: a full bucket
            self._tokens, self._updated = self.burst, now
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass
class Breaker:
    """Open after a non-retryable failure; one probe per ``probe_interval`` while open."""

    probe_interval: float
    opened_at: float | None = None
    _next_probe: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def trip(self, now: float) -> None:
        if self.opened_at is None:
            self.opened_at = now
        self._next_probe = now + self.probe_interval

    def reset(self) -> None:
        self.opened_at = None

    def probe_due(self, now: float) -> bool:
        """Return True when an attempt may go through: always while closed, once per interval
        while open. Pure: :meth:`probe_started` takes the probe."""
        return not self.is_open or now >= self._next_probe

    def probe_started(self, now: float) -> None:
        """A probe went through: the next one is due an interval from now."""
        self._next_probe = now + self.probe_interval

    def probe_now(self) -> None:
        """Let the next attempt through at once (e.g. the key file changed)."""
        self._next_probe = 0.0

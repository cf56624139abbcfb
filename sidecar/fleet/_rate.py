"""The fleet-wide start rate: at most ``amount`` task starts in any window of ``seconds``.

DashScope refuses fast ramps with ``Throttling.BurstRate`` (docs/dashscope-protocol.md
§14), and the limit counts the whole account, so the pacing must be fleet-wide
too. This uses the ``limits`` library's *moving window* on the same Redis
(``limits.aio.strategies.MovingWindowRateLimiter`` over its ``RedisStorage``
with redis-py's asyncio client, sharing this quota's connection pool) rather
than an algorithm of our own:

* it is maintained, tested against real Redis, and its Lua script takes an entry
  atomically (a refused hit adds nothing, so a cancelled or refused caller
  leaves no trace);
* a moving window is exact: no two windows' bursts add up at a boundary, as
  they do with a fixed window.

What it costs, admitted: one more round trip per call when the rate is set
(the hit; a refused hit costs a second one for the window's reset time), and
its timestamps are the sidecars' wall clocks (``time.time()``), not Redis's:
pods synchronised by NTP disagree by milliseconds, against windows of one
second or more. A rate of ``r`` per second becomes ``amount`` per ``seconds``
with the smallest whole ``seconds`` (``limits`` counts whole seconds): 5 -> 5
per 1 s, 2.5 -> 5 per 2 s, 0.2 -> 1 per 5 s. Within a window the starts may
come at once: the window, not the spacing, is what is bounded.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Final

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import ConnectionPool

__all__ = ["StartRate", "window_of"]

# The longest window considered when turning a rate into a whole number of starts.
_MAX_WINDOW_S: Final = 3600


def window_of(rate: float) -> tuple[int, int]:
    """Return ``(amount, seconds)``: ``rate`` per second as whole starts per whole seconds."""
    fraction = Fraction(rate).limit_denominator(_MAX_WINDOW_S)
    if fraction.numerator == 0:
        return 1, _MAX_WINDOW_S
    return fraction.numerator, fraction.denominator


class StartRate:
    """Takes one start from the fleet's moving window in Redis."""

    def __init__(self, rate: float, pool: ConnectionPool, key_prefix: str) -> None:
        amount, seconds = window_of(rate)
        self.amount = amount
        self.seconds = seconds
        self._item = RateLimitItemPerSecond(amount, seconds, namespace="starts")
        # No I/O here: the client is built around our pool and connects on first use.
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=key_prefix,
            # limits passes ``connection_pool`` on to redis-py's client (RedispyBridge.use_basic)
            # but types its options as scalars only.
            connection_pool=pool,  # type: ignore[arg-type]
        )
        self._limiter = MovingWindowRateLimiter(storage)
        self.round_trips = 0

    def __repr__(self) -> str:
        return f"<StartRate {self.amount} per {self.seconds}s>"

    async def take(self) -> float:
        """Take one start; return 0.0, or the seconds until one may be free (nothing taken).

        Raises redis-py's errors when Redis does not answer.
        """
        self.round_trips += 1
        if await self._limiter.hit(self._item):
            return 0.0
        self.round_trips += 1
        stats = await self._limiter.get_window_stats(self._item)
        return max(0.001, stats.reset_time - time.time())

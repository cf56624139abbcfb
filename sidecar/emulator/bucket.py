"""The burst limit on task starts: a token bucket (§14, ``Throttling.BurstRate``).

The rate-limit page names a burst error for callers whose request rate
climbs too fast, without numbers. The emulator models it as a token bucket
shared by every connection: ``burst_starts_per_s`` tokens a second, at most
``burst_size`` saved, one per admitted run-task. The knobs are read at each
start, so a test can tighten or lift the limit while the emulator runs.
Pure: the caller passes the clock.
"""

from __future__ import annotations

__all__ = ["StartBucket"]


class StartBucket:
    """Tokens for task starts; starts full."""

    def __init__(self) -> None:
        self._tokens: float | None = None  # None: full at the next take()
        self._at = 0.0

    def __repr__(self) -> str:
        tokens = "full" if self._tokens is None else f"{self._tokens:.2f}"
        return f"<StartBucket tokens={tokens}>"

    def take(self, now: float, rate: float, size: int) -> bool:
        """Take one token at time ``now``; return False if none is left.

        ``rate`` <= 0 turns the limit off (and refills the bucket).
        """
        if rate <= 0:
            self._tokens = None
            return True
        if self._tokens is None:
            tokens = float(size)
        else:
            tokens = min(float(size), self._tokens + max(0.0, now - self._at) * rate)
        self._at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False

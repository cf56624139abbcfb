"""When the pool may open upstream connections: pacing, backoff and the refused-key breaker.

The pool decides *how many* sockets it wants; the :class:`ConnectGate`
decides *whether and when* connecting is allowed, from the outcomes of the
connects so far. It composes the pure policies of :mod:`sidecar.backoff`:

* every connect takes a token from the bucket (``connect_burst``,
  ``connect_rate``), so a cold start or a mass reconnect never storms;
* after a failed connect, none until a jittered, doubling backoff has passed,
  then one at a time until one succeeds (callers too: they fail fast instead);
* a refused key (HTTP 401/403) opens the breaker: retrying cannot fix it, so
  only one probe per ``auth_probe_interval`` goes through, or one at once
  when the key file changes.

Nothing here does I/O or reads a clock: the pool passes ``now``.
"""

from __future__ import annotations

import logging
import random

from sidecar.backoff import Breaker, TokenBucket, backoff_delays
from sidecar.errors import UpstreamAuthError, UpstreamError
from sidecar.pool._policy import PoolPolicy

__all__ = ["ConnectGate"]

log = logging.getLogger(__name__)


class ConnectGate:
    """Whether the pool may connect now, learned from how the last connects went."""

    def __init__(self, policy: PoolPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng
        self._bucket = TokenBucket(policy.connect_rate, policy.connect_burst)
        self._breaker = Breaker(policy.auth_probe_interval_s)
        self._backoff = backoff_delays(policy.backoff_initial_s, policy.backoff_max_s, rng)
        self._retry_after = 0.0
        self.failures = 0  # consecutive failed connects
        self.last_error: UpstreamError | None = None
        self.auth_error: UpstreamAuthError | None = None  # set while the key is refused

    def __repr__(self) -> str:
        return (
            f"<ConnectGate failures={self.failures} key_refused={self.key_refused} "
            f"retry_after={self._retry_after:.2f}>"
        )

    @property
    def key_refused(self) -> bool:
        """True while the breaker is open: only probes may connect."""
        return self._breaker.is_open

    def may_connect(self, now: float) -> bool:
        """Return True if the backoff after the last failure has passed (key not refused)."""
        return not self._breaker.is_open and now >= self._retry_after

    def caller_may_connect(self, now: float, opening: int) -> bool:
        """Whether a caller who found no idle socket may open one for itself.

        Yes until a connect fails. After a failure, one attempt at a time:
        none while the backoff runs, none while another connect is under way.
        """
        if self.failures == 0:
            return True
        return self.may_connect(now) and opening == 0

    def retry_in(self, now: float) -> float:
        """Seconds until the backoff after the last failure has passed (0 if it has)."""
        return max(self._retry_after - now, 0.0)

    def probe_due(self, now: float) -> bool:
        """While the key is refused: True once a probe interval has passed since the last."""
        return self._breaker.probe_due(now)

    def probe_started(self, now: float) -> None:
        """A probe of the refused key is being made."""
        self._breaker.probe_started(now)

    def key_changed(self) -> None:
        """The key file changed: let a probe through at once if the key was refused."""
        if self._breaker.is_open:
            self._breaker.probe_now()
            self._retry_after = 0.0

    def pace(self, now: float) -> float:
        """Take a token for one connect; return the seconds to wait before making it."""
        return self._bucket.reserve(now)

    def succeeded(self) -> None:
        """A connect worked: forget the failures and close the breaker."""
        self._backoff = backoff_delays(
            self._policy.backoff_initial_s, self._policy.backoff_max_s, self._rng
        )
        self.failures = 0
        self._retry_after = 0.0
        self.last_error = None
        if self._breaker.is_open:
            log.info("upstream accepts the API key again: connecting")
            self._breaker.reset()
            self.auth_error = None

    def failed(self, exc: UpstreamError, now: float) -> None:
        """A connect failed: back off, or open the breaker for a refused key."""
        self.last_error = exc
        self.failures += 1
        if isinstance(exc, UpstreamAuthError):
            if not self._breaker.is_open:
                log.error(
                    "%s: not connecting again except one probe every %gs or when the key "
                    "file changes; the Synthesizer health service is NOT_SERVING",
                    exc,
                    self._policy.auth_probe_interval_s,
                )
            self._breaker.trip(now)
            self.auth_error = exc
        else:
            delay = next(self._backoff)
            self._retry_after = now + delay
            log.warning("upstream connect failed (%s); next attempt in %.2fs", exc, delay)

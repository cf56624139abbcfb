"""Whether Redis answers, as the last Redis operation found it, and what to say about it.

One failed operation (a refused or dropped connection, no answer within
``command_timeout_s``) marks the link down: from then on calls do not wait on
Redis at all (``open``: local slots; ``closed``: FleetUnavailable) and only the
renewer probes it, with a jittered backoff. Its first success marks the link up
again and, in the same round trip, registers the slots this process held
meanwhile. The warning repeats at most once a minute while Redis stays away.

:func:`keep_cancels` wraps every redis-py await: on Python 3.11 redis-py can
lose a cancellation (see there).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from sidecar.fleet._settings import FleetSettings, redact_text, redact_url

__all__ = ["RedisLink", "keep_cancels"]

log = logging.getLogger("sidecar.fleet")

WARN_INTERVAL_S: Final = 60.0

_T = TypeVar("_T")


class RedisLink:
    """Up or down, the errors so far, and the last one (passwords scrubbed)."""

    def __init__(self, settings: FleetSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self.up = True  # until an operation fails
        self.errors = 0
        self.last_error: str | None = None
        self._down_since = 0.0
        self._warned_at = -math.inf

    def __repr__(self) -> str:
        return f"<RedisLink {'up' if self.up else 'down'} errors={self.errors}>"

    def failed(self, exc: BaseException) -> bool:
        """A Redis operation failed; return True if the link was up until now."""
        now = self._clock()
        self.errors += 1
        self.last_error = redact_text(f"{type(exc).__name__}: {exc}", self._settings.secrets)
        went_down = self.up
        if went_down:
            self.up = False
            self._down_since = now
        if went_down or now - self._warned_at >= WARN_INTERVAL_S:
            self._warned_at = now
            where = redact_url(self._settings.redis_url)
            if self._settings.on_redis_down == "open":
                log.warning(
                    "fleet quota not enforced: Redis at %s unreachable (%s); calls go on "
                    "with local limits only",
                    where,
                    self.last_error,
                )
            else:
                log.warning(
                    "fleet quota unavailable: Redis at %s unreachable (%s); calls fail "
                    "until it answers",
                    where,
                    self.last_error,
                )
        return went_down

    def succeeded(self) -> bool:
        """A Redis operation worked; return True if the link was down until now."""
        if self.up:
            return False
        self.up = True
        self._warned_at = -math.inf
        log.warning(
            "fleet quota enforced again: Redis answers after %.1fs",
            self._clock() - self._down_since,
        )
        return True


async def keep_cancels(operation: Awaitable[_T]) -> _T:
    """Await a redis-py operation; raise the cancellation it swallowed, if it did.

    On Python 3.11, ``asyncio.wait_for`` (redis-py reads sockets through it) returns
    the result instead of raising when a cancellation arrives just as the result
    does (CPython gh-86296, fixed in 3.12 by building it on ``asyncio.timeout``).
    The cancel request is lost, and a cancelled acquire would go on, or the
    renewer never stop. ``Task.cancelling()`` still counts the request.
    """
    task = asyncio.current_task()
    assert task is not None
    requests = task.cancelling()
    result = await operation
    if task.cancelling() > requests:
        raise asyncio.CancelledError
    return result

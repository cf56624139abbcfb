"""The scopes the pool opens: borrow, return, connect (the call's is in ``_synthesis``).

Each records its span attributes and its measurements in one place, so the
call sites stay one ``with`` and one or two method calls. Every scope is a
no-op when its :class:`~sidecar.telemetry._instruments.Instruments` are
disabled (then ``_core`` hands out shared singletons that never change).

A scope makes its span current on ``__enter__`` and detaches it on
``__exit__``; the code between must not yield to a caller, which holds for
every call site (they wrap awaits, not ``yield``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from sidecar.errors import (
    Overloaded,
    PoolClosed,
    UpstreamAuthError,
    UpstreamTaskFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.telemetry import _names as n
from sidecar.telemetry._instruments import Instruments

if TYPE_CHECKING:
    from contextvars import Token

    from sidecar.pool import PoolStatus

__all__ = [
    "Borrow",
    "Connect",
    "Return",
    "error_status",
    "return_reason",
]


def error_status(span: trace.Span, exc: BaseException, *, failed: bool = True) -> None:
    """Set ``error.type`` to the exception's class; with ``failed``, the ERROR status too."""
    span.set_attribute(n.ERROR_TYPE, type(exc).__name__)
    if failed:
        span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))


class _Current:
    """A span made current between ``__enter__`` and ``__exit__``."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: Token[otel_context.Context] | None = None

    def enter(self) -> None:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def leave(self) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        self._span.end()


class Borrow:
    """The ``borrow`` span and the pool wait-time measurement of one call."""

    def __init__(self, instruments: Instruments, status: Callable[[], PoolStatus] | None) -> None:
        self._t = instruments
        self._status = status
        self._started = 0.0
        self._result = ""
        self._current: _Current | None = None

    def __enter__(self) -> Borrow:
        if not self._t.enabled:
            return self
        self._started = time.monotonic()
        if self._t.tracing:
            c = self._status() if self._status is not None else None
            attributes = (
                {
                    n.POOL_IDLE: c.idle,
                    n.POOL_BUSY: c.busy,
                    n.POOL_OPENING: c.opening,
                    n.POOL_WAITERS: c.waiters,
                    n.POOL_MAX_SIZE: c.max_size,
                }
                if c is not None
                else None
            )
            self._current = _Current(
                self._t.tracer.start_span(n.SPAN_BORROW, attributes=attributes)
            )
            self._current.enter()
        return self

    def borrowed(self, *, connection_id: int, warm: bool, wait_ms: float) -> None:
        """Record what the borrow got: a warm idle connection, or one opened for it."""
        if not self._t.enabled:
            return
        self._result = "warm" if warm else "opened"
        if self._current is not None:
            self._current._span.set_attributes(
                {
                    n.CONNECTION_ID: connection_id,
                    n.BORROW_WARM: warm,
                    n.BORROW_OPENED: not warm,
                    n.BORROW_WAIT_MS: wait_ms,
                }
            )

    def fleet(self, *, wait_ms: float, enforced: bool) -> None:
        """Record the fleet quota slot the borrow took for its task."""
        if not self._t.enabled:
            return
        self._t.fleet_wait_time.record(wait_ms / 1000, {n.FLEET_ENFORCED: enforced})
        if self._current is not None:
            self._current._span.set_attributes(
                {n.FLEET_WAIT_MS: wait_ms, n.FLEET_ENFORCED: enforced}
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._t.enabled:
            return
        wait_s = time.monotonic() - self._started
        # A connection may be borrowed and the borrow still fail after (no fleet slot in
        # time, the call cancelled meanwhile): the failure is the result then.
        failed = exc is not None or not self._result
        result = _borrow_result(exc) if failed else self._result
        self._t.wait_time.record(wait_s, {n.BORROW_RESULT: result})
        if result == "exhausted":
            self._t.timeouts.add(1)
        if self._current is None:
            return
        span = self._current._span
        span.set_attribute(n.BORROW_RESULT, result)
        if failed:
            span.set_attribute(n.BORROW_WAIT_MS, wait_s * 1000)
        if exc is not None:
            error_status(span, exc, failed=result != "cancelled")
        self._current.leave()


def _borrow_result(exc: BaseException | None) -> str:
    if isinstance(exc, Overloaded):  # the pool's or the fleet quota's wait ran out
        return "exhausted"
    if isinstance(exc, PoolClosed):
        return "closed"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return "error"


def return_reason(*, kept: bool, cancelled: bool, error: BaseException | None) -> str:
    """Name why a connection went back to the pool as it did.

    Kept: ``finished`` (task-finished). Discarded: ``task_failed``,
    ``timeout``, ``connection_lost``, ``cancelled`` (the call ended before its
    task: the socket was closed to stop it) or ``closed`` (anything else, e.g.
    shutdown).
    """
    if kept:
        return "finished"
    if isinstance(error, UpstreamTaskFailed):
        return "task_failed"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamUnavailable):
        return "connection_lost"
    if cancelled:
        return "cancelled"
    return "closed"


class Return:
    """The ``return`` span: the connection kept for reuse or discarded, and why."""

    def __init__(
        self,
        instruments: Instruments,
        connection_id: int,
        *,
        kept: bool,
        reason: str,
        held_s: float | None,
    ) -> None:
        self._t = instruments
        self._connection_id = connection_id
        self._kept = kept
        self._reason = reason
        self._held_s = held_s
        self._current: _Current | None = None

    def __enter__(self) -> Return:
        if self._t.tracing:
            span = self._t.tracer.start_span(
                n.SPAN_RETURN,
                attributes={
                    n.CONNECTION_ID: self._connection_id,
                    n.RETURN_RESULT: "returned" if self._kept else "discarded",
                    n.RETURN_REASON: self._reason,
                },
            )
            self._current = _Current(span)
            self._current.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._t.metering and self._held_s is not None:
            self._t.use_time.record(self._held_s)
        if self._current is not None:
            if exc is not None:
                error_status(self._current._span, exc)
            self._current.leave()


class Connect:
    """One upstream connect: its span and the create-time measurement."""

    def __init__(self, instruments: Instruments, purpose: str, span: trace.Span) -> None:
        self._t = instruments
        self._purpose = purpose
        self._current = _Current(span)
        self._started = 0.0

    @property
    def span(self) -> trace.Span:
        return self._current._span

    def __enter__(self) -> Connect:
        if self._t.enabled:
            self._started = time.monotonic()
            if self._t.tracing:
                self._current.enter()
        return self

    def opened(self, connection_id: int) -> None:
        """Record the id of the connection that was opened."""
        if self._t.tracing:
            self.span.set_attribute(n.CONNECTION_ID, connection_id)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._t.enabled:
            return
        seconds = time.monotonic() - self._started
        result = _connect_result(exc)
        if self._t.metering:
            self._t.create_time.record(
                seconds, {n.CONNECT_PURPOSE: self._purpose, n.CONNECT_RESULT: result}
            )
        if not self._t.tracing:
            return
        span = self.span
        span.set_attribute(n.CONNECT_RESULT, result)
        span.set_attribute(n.CONNECT_MS, seconds * 1000)
        if exc is not None:
            error_status(span, exc, failed=result != "cancelled")
        self._current.leave()


def _connect_result(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, UpstreamAuthError):
        return "auth_error"
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"

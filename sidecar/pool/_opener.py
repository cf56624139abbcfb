"""Opening the pool's connections: paced, traced, counted while in flight, never leaked.

The pool decides what to open: warm spares, a renewal's replacement, a probe
of a refused key, or a connection for a caller who found none idle. The
:class:`Opener` opens it: each connect waits for its token from the
:class:`~sidecar.pool._gate.ConnectGate`, runs in a span, and counts in
:attr:`Opener.opening` until it ends, so the pool's ``idle + busy + opening``
never passes its maximum.

A caller's connect is shielded: if the caller gives up (cancelled, or its
borrow timed out), the connect goes on and its connection joins the pool
instead of leaking. Outcomes reach the pool after the count has dropped:
``opened(connection, replaces)`` and ``failed(error, replaces)``, except a
caller's own connection, which :meth:`Opener.for_caller` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from sidecar.errors import PoolExhausted, UpstreamError
from sidecar.pool._gate import ConnectGate
from sidecar.telemetry import Telemetry
from sidecar.upstream import UpstreamConnection

__all__ = ["Connector", "Opener"]

log = logging.getLogger(__name__)

Connector = Callable[[], Awaitable[UpstreamConnection]]
Opened = Callable[[UpstreamConnection, UpstreamConnection | None], None]
Failed = Callable[[UpstreamError, UpstreamConnection | None], None]


class Opener:
    """Opens connections for the pool; see the module docstring."""

    def __init__(
        self,
        connector: Connector,
        gate: ConnectGate,
        telemetry: Telemetry,
        *,
        opened: Opened,
        failed: Failed,
    ) -> None:
        self._connector = connector
        self._gate = gate
        self._telemetry = telemetry
        self._opened = opened
        self._failed = failed
        self.opening = 0  # connects in flight
        self.opened_total = 0
        self.tasks: set[asyncio.Task[None]] = set()  # the background connects

    def __repr__(self) -> str:
        return f"<Opener opening={self.opening} opened_total={self.opened_total}>"

    def start(self, *, reason: str, replaces: UpstreamConnection | None = None) -> None:
        """Open a connection in the background (``reason``: warm, renewal, probe)."""
        self.opening += 1
        task = asyncio.get_running_loop().create_task(self._in_background(reason, replaces))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def for_caller(self, bound: float) -> UpstreamConnection:
        """Open a connection for the calling borrower within ``bound`` seconds.

        Raises :class:`PoolExhausted` when it takes longer (the connection, if
        it comes, joins the pool), and the upstream's error when it fails.
        """
        self.opening += 1
        connect = asyncio.ensure_future(self._paced_connect("caller"))
        try:
            async with asyncio.timeout(bound):
                connection = await asyncio.shield(connect)
        except (asyncio.CancelledError, TimeoutError) as exc:
            connect.add_done_callback(self._adopt)
            if isinstance(exc, TimeoutError):
                raise PoolExhausted(
                    f"no upstream connection could be opened within {bound:g}s",
                    retry_after_s=1.0,
                ) from exc
            raise
        except UpstreamError as exc:
            self.opening -= 1
            self._failed(exc, None)
            raise
        except BaseException:
            # A bug (in the connector, the telemetry): the caller gets it, the count stays right.
            self.opening -= 1
            raise
        self.opening -= 1
        return connection

    def _adopt(self, connect: asyncio.Future[UpstreamConnection]) -> None:
        """A connect its caller gave up on ended: its connection goes to the pool."""
        self.opening -= 1
        if connect.cancelled():
            return
        exc = connect.exception()
        if isinstance(exc, UpstreamError):
            self._failed(exc, None)
        elif exc is None:
            self._opened(connect.result(), None)
        else:  # a bug no caller is left to see
            log.error("a connect its caller gave up on failed", exc_info=exc)

    async def _in_background(self, reason: str, replaces: UpstreamConnection | None) -> None:
        try:
            connection = await self._paced_connect(reason, replaces)
        except UpstreamError as exc:
            self.opening -= 1
            self._failed(exc, replaces)
            return
        except BaseException:
            self.opening -= 1
            raise
        self.opening -= 1
        log.debug("opened %r (%s)", connection, reason)
        self._opened(connection, replaces)

    async def _paced_connect(
        self, reason: str, replaces: UpstreamConnection | None = None
    ) -> UpstreamConnection:
        delay = self._gate.pace(time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)
        # A caller's connect is part of its borrow; background ones get root
        # spans linked to whatever call triggered them (see sidecar.telemetry).
        with self._telemetry.connecting(
            reason,
            detached=reason != "caller",
            replaces=replaces.id if replaces is not None else None,
        ) as connect:
            connection = await self._connector()
            connect.opened(connection.id)
        self.opened_total += 1
        return connection

"""The emulator's listener: WebSocket handshakes, plain HTTP control, counters.

:class:`Emulator` serves the DashScope run-task protocol on
``ws://127.0.0.1:<port>/api-ws/v1/inference`` (with or without a trailing
``/``), one :class:`~sidecar.emulator.session.Session` per connection, and
answers two plain HTTP requests on the same port (loopback only):

- ``GET /_emulator/stats``: :class:`~sidecar.emulator.stats.EmulatorStats` as JSON;
- ``GET /_emulator/knobs?name=value&...``: change knobs, return them as JSON
  (400 with ``{"error": ...}`` for an unknown name or a bad value).

A server-initiated close aborts the TCP connection when the peer has not
completed the closing handshake within 2 s: the official Python SDK answers the
close frame but leaves its socket half-open (§10). The same bound applies when
the client sends a close frame and then never closes its TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import ipaddress
import json
import logging
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from sidecar.emulator.bucket import StartBucket
from sidecar.emulator.knobs import EmulatorKnobs, KnobError
from sidecar.emulator.pacer import Pacer
from sidecar.emulator.session import Session
from sidecar.emulator.stats import EmulatorStats, StatsBook

__all__ = ["CLOSE_TIMEOUT_S", "PATH", "Emulator"]

_log = logging.getLogger(__name__)

PATH: Final = "/api-ws/v1/inference"
CLOSE_TIMEOUT_S: Final = 2.0
_NO_CLOSE_FRAME: Final = 1006


class _Connection(ServerConnection):
    """A server connection that aborts peers stalling after a close frame.

    It also reports its end: ``on_lost`` runs once the TCP connection is gone,
    which is when the emulator stops counting it as open.
    """

    connection_id = 0
    on_lost: Callable[[_Connection], None] | None = None
    _abort_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.protocol.state in (State.CLOSING, State.CLOSED) and self._abort_timer is None:
            self._abort_timer = self.loop.call_later(CLOSE_TIMEOUT_S, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost(self)


class Emulator:
    """A local DashScope CosyVoice WebSocket server for tests and demos.

    Use it as ``async with Emulator(knobs) as emu:`` or call :meth:`start` and
    :meth:`aclose`. ``host`` must be a loopback address unless
    ``allow_non_loopback`` is set; the HTTP control endpoints answer only on
    loopback.
    """

    def __init__(
        self,
        knobs: EmulatorKnobs | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_non_loopback: bool = False,
    ) -> None:
        self._loopback = _is_loopback(host)
        if not self._loopback and not allow_non_loopback:
            raise ValueError(f"emulator host {host!r} is not a loopback address")
        self.knobs = knobs if knobs is not None else EmulatorKnobs()
        self.host = host
        self._port = port
        # Set when the counters change; only made while someone waits, since
        # the counters change with every audio frame.
        self._changed: asyncio.Event | None = None
        self.book = StatsBook(on_change=self._notify)
        self.pacer = Pacer()  # sends the paced audio frames of every task
        self._sessions: set[Session] = set()
        self._server: Server | None = None
        self._ordinal = 0
        self._starts = StartBucket()  # the burst limit (§14), shared by every connection

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start listening; :attr:`url` is valid afterwards."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            process_request=self._process_request,
            process_response=self._process_response,
            create_connection=_Connection,
            compression=None,
            ping_interval=None,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=2**22,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        _log.info("emulator listening on %s", self.url)

    async def aclose(self) -> None:
        """Close every client connection with 1000 and stop listening."""
        server = self._server
        if server is None:
            return
        server.close(close_connections=False)
        sessions = list(self._sessions)
        if sessions:
            await asyncio.gather(
                *(s.close(CloseCode.NORMAL_CLOSURE, "emulator shutting down") for s in sessions),
                return_exceptions=True,
            )
        await server.wait_closed()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- what tests read ------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def url(self) -> str:
        """The WebSocket URL, e.g. ``ws://127.0.0.1:PORT/api-ws/v1/inference``."""
        return f"ws://{self._netloc}{PATH}"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters (later events do not change it)."""
        return self.book.snapshot()

    async def wait_for(
        self, predicate: Callable[[EmulatorStats], bool], timeout: float
    ) -> EmulatorStats:
        """Wait until ``predicate(stats)`` holds; return those stats.

        Raises TimeoutError after ``timeout`` seconds with the last stats in
        the message.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(stats := self.stats):
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"emulator stats condition not met in {timeout}s: {self!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return stats

    def update_knobs(self, **changes: Any) -> None:
        """Change knobs (validated, all or nothing) and apply them to running timers."""
        self.knobs.update(**changes)
        self._knobs_changed()

    def update_knobs_from_strings(self, changes: dict[str, str]) -> None:
        """Like :meth:`update_knobs`, with string values (see EmulatorKnobs.update_from_strings)."""
        self.knobs.update_from_strings(changes)
        self._knobs_changed()

    def __repr__(self) -> str:
        book = self.book
        where = self.url if self._server is not None else "not started"
        return (
            f"<Emulator {where} open={book.connections_open} "
            f"opened={book.connections_opened} running_tasks={book.running_tasks}>"
        )

    # -- internals ------------------------------------------------------------

    def next_task_ordinal(self) -> int:
        self._ordinal += 1
        return self._ordinal

    def take_start(self) -> bool:
        knobs = self.knobs
        now = asyncio.get_running_loop().time()
        return self._starts.take(now, knobs.burst_starts_per_s, knobs.burst_size)

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    def _knobs_changed(self) -> None:
        for session in self._sessions:
            session.wake()

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path, _, query = request.path.partition("?")
        if path.startswith("/_emulator/") and self._loopback:
            return self._control(path, query)
        if path not in (PATH, PATH + "/"):
            return _response(http.HTTPStatus.NOT_FOUND, {"code": "NotFound", "message": path})
        if self.knobs.handshake_delay_s > 0:
            await asyncio.sleep(self.knobs.handshake_delay_s)
        if not self._authorized(request.headers.get("Authorization")):
            self.book.handshake_rejected()
            body = {
                "code": "InvalidApiKey",
                "message": "Invalid API-key provided.",
                "request_id": secrets.token_hex(16),
            }
            return _response(http.HTTPStatus.UNAUTHORIZED, body)
        return None

    def _authorized(self, authorization: str | None) -> bool:
        """Return True for ``Bearer <key>`` (scheme case-insensitive) with an accepted key (§2)."""
        if authorization is None:
            return False
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return False
        return self.knobs.api_keys is None or key in self.knobs.api_keys

    def _control(self, path: str, query: str) -> Response:
        if path == "/_emulator/stats":
            return _response(http.HTTPStatus.OK, self.stats.to_dict())
        if path == "/_emulator/knobs":
            try:
                self.update_knobs_from_strings(dict(parse_qsl(query, keep_blank_values=True)))
            except KnobError as exc:
                return _response(http.HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return _response(http.HTTPStatus.OK, self.knobs.to_dict())
        return _response(http.HTTPStatus.NOT_FOUND, {"error": f"unknown endpoint {path}"})

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """Count the connection as open from the moment its 101 response goes out."""
        if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS:
            assert isinstance(connection, _Connection)
            connection.connection_id = self.book.connection_opened()
            connection.on_lost = self._connection_lost

    def _connection_lost(self, connection: _Connection) -> None:
        self.book.connection_closed(_client_close_code(connection))

    async def _handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, _Connection)
        session = Session(self, connection, connection.connection_id)
        self._sessions.add(session)
        try:
            await session.serve()
        finally:
            self._sessions.discard(session)


def _client_close_code(connection: ServerConnection) -> int | None:
    """The close code the client sent first; 1006 if it sent none; None for an echo."""
    protocol = connection.protocol
    if protocol.close_rcvd is None:
        return _NO_CLOSE_FRAME
    return protocol.close_rcvd.code if protocol.close_rcvd_then_sent else None


def _response(status: http.HTTPStatus, body: Any) -> Response:
    data = json.dumps(body, ensure_ascii=False).encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", "application/json"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""One upstream DashScope WebSocket: the asyncio driver of the protocol core.

An :class:`UpstreamConnection` carries one task at a time
(docs/dashscope-protocol.md §7). Its :attr:`~UpstreamConnection.reusable`
flag is the only place the reuse rule lives: a connection may carry another
task only after ``task-finished``, and is discarded after ``task-failed``, a
close frame, a transport error, a protocol violation, or a task that ended
any other way. A task that must stop early is abandoned: its socket is closed
(code 1000), the documented way to interrupt a task, so no audio of it can
reach a later task on the same socket.

Errors are turned into :mod:`sidecar.errors` here, so nothing above this
module knows about websockets' exceptions.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.protocol import State

from sidecar import protocol
from sidecar.errors import (
    UpstreamAuthError,
    UpstreamTaskFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = ["UpstreamConnection", "UpstreamTask", "open_connection"]

log = logging.getLogger(__name__)
_ids = itertools.count(1)
# Audio frames are a few KiB (§8); 1 MiB bounds a hostile or broken peer.
_MAX_FRAME_BYTES: Final = 1 << 20
# Frames websockets buffers before it stops reading the socket, so a slow
# caller pushes back on the upstream through TCP instead of growing memory.
_MAX_QUEUED_FRAMES: Final = 16


class _State(enum.Enum):
    """Life cycle of one upstream connection."""

    IDLE = "idle"  # open, no task: may be borrowed
    BUSY = "busy"  # carrying one task
    CLOSED = "closed"  # closed or condemned: never used again


async def open_connection(
    url: str,
    api_key: str,
    *,
    connect_timeout: float,
    workspace: str | None = None,
) -> UpstreamConnection:
    """Open and hand-shake one WebSocket to ``url``.

    ``workspace`` goes out as ``X-DashScope-WorkSpace`` (§2). Raises
    :class:`UpstreamAuthError` when the key is refused (HTTP 401/403, §2) and
    :class:`UpstreamUnavailable` for every other failure, including
    ``connect_timeout`` expiring.
    """
    headers = {"Authorization": f"Bearer {api_key}"}
    if workspace:
        headers["X-DashScope-WorkSpace"] = workspace
    try:
        ws = await connect(
            url,
            additional_headers=headers,
            user_agent_header="cosyvoice-sidecar",
            # DashScope's SDKs negotiate no extension, and audio does not compress.
            compression=None,
            open_timeout=connect_timeout,
            max_size=_MAX_FRAME_BYTES,
            max_queue=_MAX_QUEUED_FRAMES,
            # Pings detect a silently dead peer; the server must answer them (RFC 6455).
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise UpstreamAuthError(status) from exc
        raise UpstreamUnavailable(f"upstream handshake refused with HTTP {status}") from exc
    except TimeoutError as exc:
        raise UpstreamUnavailable(
            f"upstream connect timed out after {connect_timeout:g}s (cross-border connects "
            "to DashScope can take 10-30 s: see --connect-timeout)"
        ) from exc
    except (OSError, WebSocketException) as exc:
        raise UpstreamUnavailable(f"cannot connect to upstream: {exc}") from exc
    return UpstreamConnection(ws)


class UpstreamConnection:
    """A DashScope WebSocket that carries one task at a time."""

    def __init__(self, ws: ClientConnection) -> None:
        self.id = next(_ids)
        self.opened_at = time.monotonic()
        self.tasks_done = 0
        self._ws = ws
        self._state = _State.IDLE
        self._close_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<UpstreamConnection #{self.id} {self.state.value} tasks={self.tasks_done}>"

    @property
    def state(self) -> _State:
        if self._state is not _State.CLOSED and self._ws.state is not State.OPEN:
            # The peer closed (a close frame or EOF was processed): stale.
            self._state = _State.CLOSED
        return self._state

    @property
    def reusable(self) -> bool:
        """Return True if the connection may carry another task (the reuse rule)."""
        return self.state is _State.IDLE

    @property
    def closed(self) -> bool:
        return self.state is _State.CLOSED

    async def start_task(
        self, model: str, parameters: Mapping[str, Any], *, start_timeout: float
    ) -> UpstreamTask:
        """Send run-task and wait for task-started (§4.1, §7).

        Raises :class:`UpstreamTaskFailed` for a task-failed answer,
        :class:`UpstreamTimeout` when no answer comes in ``start_timeout``, and
        :class:`UpstreamUnavailable` when the connection breaks. On any error
        the connection is condemned.
        """
        if self.state is not _State.IDLE:
            raise RuntimeError(f"{self!r} cannot start a task")
        self._state = _State.BUSY
        task = UpstreamTask(self, protocol.ClientTask(protocol.new_task_id(), model, parameters))
        try:
            await self._send(task.protocol.start())
            async with asyncio.timeout(start_timeout):
                while task.protocol.state is protocol.TaskState.STARTING:
                    await task.next_event()
        except TimeoutError as exc:
            self.condemn()
            raise UpstreamTimeout(f"no task-started within {start_timeout:g}s") from exc
        except BaseException:
            self.condemn()
            raise
        return task

    def condemn(self) -> None:
        """Mark the connection unusable and close it in the background (code 1000)."""
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close())

    async def aclose(self) -> None:
        """Close the connection with code 1000 and wait for the close (bounded by close_timeout)."""
        self.condemn()
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        try:
            await self._ws.close(1000)
        except Exception:
            log.debug("closing %r failed", self, exc_info=True)

    def _task_ended(self, task: UpstreamTask) -> None:
        """Apply the reuse rule when a task ends."""
        self.tasks_done += 1
        if task.protocol.state is protocol.TaskState.FINISHED and self._state is not (
            _State.CLOSED
        ):
            self._state = _State.IDLE
        else:
            self.condemn()

    async def _send(self, frame: str) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            self.condemn()
            raise UpstreamUnavailable(f"upstream connection closed: {exc}") from exc

    async def _recv(self) -> str | bytes:
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            self.condemn()
            raise UpstreamUnavailable(f"upstream connection closed mid-task: {exc}") from exc


class UpstreamTask:
    """One DashScope task on one connection, from task-started to its end."""

    def __init__(self, connection: UpstreamConnection, task: protocol.ClientTask) -> None:
        self.connection = connection
        self.protocol = task
        self._ended = False

    @property
    def task_id(self) -> str:
        return self.protocol.task_id

    @property
    def state(self) -> protocol.TaskState:
        return self.protocol.state

    async def send_text(self, text: str) -> None:
        await self.connection._send(self.protocol.send_text(text))

    async def flush(self) -> None:
        await self.connection._send(self.protocol.flush())

    async def finish(self) -> None:
        await self.connection._send(self.protocol.finish())

    async def next_event(self) -> protocol.ServerEvent | None:
        """Read one frame and return its event (None for another task's late event)."""
        frame = await self.connection._recv()
        try:
            if isinstance(frame, bytes):
                # Audio: about every other frame, and never ends the task.
                return self.protocol.receive_bytes(frame)
            event = self.protocol.receive_text(frame)
        except protocol.UnexpectedFrame as exc:
            self._end()
            raise UpstreamUnavailable(f"upstream protocol violation: {exc}") from exc
        if event is None or isinstance(event, protocol.SentenceEvent):
            return event
        if isinstance(event, protocol.TaskFailed):
            self._end()
            raise UpstreamTaskFailed(event.code, event.message, event.task_id, event.request_uuid)
        if isinstance(event, protocol.TaskFinished):
            self._end()
        return event

    def abandon(self) -> None:
        """End the task here; unless it ended already, its socket is closed (code 1000).

        Closing the socket is the documented way to stop a running task at once
        (§7): the cancel directive is not in the official pages, and a server
        that ignored it would go on synthesizing (and billing).
        """
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.connection._task_ended(self)

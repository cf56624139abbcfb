"""One synthesis: the bridge between a caller's commands and one upstream task.

A :class:`Session` borrows a connection, starts the task, and then runs two
pumps until the task ends:

* the *feeder* reads the caller's commands (text, flush, finish) and sends
  them upstream, splitting long text at DashScope's per-message limit;
* the *reader* turns upstream events into responses.

Both write into one small bounded :class:`~sidecar.outbox.Outbox` that the
gRPC layer drains (and which turns audio frames into chunks). When the caller
reads slowly the outbox fills, the reader stops reading the socket, websockets
stops reading TCP after a few frames, and the upstream is pushed back: memory
per stream stays bounded (outbox + websockets' frame queue).

Whatever way the session ends (completion, error, the caller hanging up), the
cleanup runs shielded from cancellation: an unfinished task is cancelled
upstream, and the connection goes back to the pool, which keeps it only if
the task reached ``task-finished``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb

from sidecar import protocol, responses
from sidecar.config import Config
from sidecar.deadlines import UpstreamDeadlines
from sidecar.errors import (
    CallerIdle,
    InvalidRequest,
    SidecarError,
    UpstreamTaskFailed,
    UpstreamUnavailable,
)
from sidecar.outbox import Outbox
from sidecar.params import TaskParams
from sidecar.pool import Lease, Pool
from sidecar.telemetry import Synthesis, Telemetry
from sidecar.upstream import UpstreamTask

__all__ = ["Command", "Finish", "Flush", "Session", "Text"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Text:
    """A caller's text fragment."""

    text: str


@dataclass(frozen=True)
class Flush:
    """The caller asks for the buffered text to be synthesized now."""


@dataclass(frozen=True)
class Finish:
    """The caller has no more text."""


Command = Text | Flush | Finish


class Session:
    """One call's synthesis on one borrowed connection."""

    def __init__(
        self,
        pool: Pool,
        config: Config,
        params: TaskParams,
        *,
        request_id: str,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._pool = pool
        self._telemetry = telemetry or Telemetry.disabled()
        self._config = config
        self._params = params
        self.request_id = request_id
        self._started_at = time.monotonic()
        self._outbox = Outbox(params, batch_ms=config.audio_batch_ms)
        self._lease: Lease | None = None
        self._task: UpstreamTask | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._frames = 0  # audio frames received from the upstream
        self._deadlines = UpstreamDeadlines(
            asyncio.get_running_loop(),
            first_audio_s=config.first_audio_timeout_s,
            stall_s=config.stall_timeout_s,
            finish_s=config.finish_timeout_s,
            on_overdue=self._on_overdue,
        )
        self._timed_out = False
        self._first_audio_ms = 0.0
        self._timings = responses.SentenceTimings()
        self._texts_sent = 0
        # For telemetry: how the call ended, and what the task did.
        self._synthesis: Synthesis | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._borrowed_at = 0.0

    @property
    def task_id(self) -> str | None:
        return self._task.task_id if self._task else None

    async def run(
        self, commands: AsyncIterator[Command], *, acquire_timeout: float | None
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        """Yield every response of the call, ``started`` first and ``completed`` last.

        Raises :mod:`sidecar.errors` exceptions; the servicer maps them to
        statuses.
        """
        try:
            await self._borrow_and_start(acquire_timeout)
            assert self._lease is not None
            assert self._task is not None
            log.info(
                "request %s: task %s on %r",
                self.request_id,
                self._task.task_id,
                self._lease.connection,
            )
            yield responses.started(
                request_id=self.request_id,
                task_id=self._task.task_id,
                params=self._params,
                warm=self._lease.warm,
                pool_wait_ms=self._lease.wait_ms,
            )
            assert self._synthesis is not None
            with self._synthesis.activate():  # the pumps (and their logs) inherit the span
                self._pumps = [
                    asyncio.create_task(self._feed(commands), name=f"feed-{self.request_id}"),
                    asyncio.create_task(self._read(), name=f"read-{self.request_id}"),
                ]
            lease = self._lease
            while (response := await self._outbox.get()) is not None:
                yield response
                lease.touch()
            yield responses.completed(
                billed_characters=self._task.protocol.billed_characters or 0,
                first_audio_ms=self._first_audio_ms,
                audio_duration_ms=self._outbox.audio_ms(),
                audio_bytes=self._outbox.audio_bytes,
                audio_chunks=self._outbox.chunks,
            )
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            cleanup = asyncio.ensure_future(self._cleanup())
            await asyncio.shield(cleanup)

    async def _borrow_and_start(self, acquire_timeout: float | None) -> None:
        """Borrow a connection and start the task, retrying once on a fresh socket.

        A pooled socket can die unseen (a silent drop, a close racing the
        borrow). If it fails before task-started, nothing reached the caller
        yet, so one transparent retry on a newly opened socket is safe; any
        later failure is reported, never retried (audio may have gone out).
        """
        for attempt in (1, 2):
            with self._telemetry.borrow(self._pool.status) as borrow:
                self._lease = await self._pool.acquire(acquire_timeout, fresh=attempt > 1)
                borrow.borrowed(
                    connection_id=self._lease.connection.id,
                    warm=self._lease.warm,
                    wait_ms=self._lease.wait_ms,
                )
            self._borrowed_at = time.monotonic()
            self._lease.on_reclaim = self._reclaimed
            self._synthesis = self._telemetry.synthesis(
                request_id=self.request_id,
                model=self._params.model,
                voice=self._params.voice,
                audio_format=self._params.format,
                sample_rate=self._params.sample_rate,
            )
            try:
                with self._synthesis.activate():
                    self._task = await self._lease.connection.start_task(
                        self._params.model,
                        self._params.parameters,
                        start_timeout=self._config.start_timeout_s,
                    )
                self._synthesis.started(
                    task_id=self._task.task_id, connection_id=self._lease.connection.id
                )
                return
            except UpstreamTaskFailed as exc:
                # Refused at start (a bad voice, throttling): the task still has an id.
                self._synthesis.started(
                    task_id=exc.task_id, connection_id=self._lease.connection.id
                )
                raise
            except UpstreamUnavailable as exc:
                self._give_back(exc)
                self._lease = None
                if attempt > 1:
                    raise
                self._pool.note_stale_retry()
                log.info("request %s: %s; retrying on a fresh connection", self.request_id, exc)

    def _reclaimed(self) -> None:
        """The pool took the connection back from a stalled call: end the call.

        The pool has already closed the socket, so the pool is free either way;
        a caller that stopped reading learns of it when it reads again.
        """
        log.warning("request %s: connection reclaimed after no activity", self.request_id)
        self.abort(
            UpstreamUnavailable(
                f"the call showed no activity for {self._pool.policy.lease_stall:g}s; "
                "its upstream connection was reclaimed"
            )
        )

    def abort(self, error: SidecarError) -> None:
        """End the call with ``error`` (e.g. shutdown past the drain grace); never blocks.

        The pumps stop, pending responses are dropped, and the writer raises
        ``error``; the cleanup then cancels the task upstream as usual.
        """
        for pump in self._pumps:
            pump.cancel()
        self._outbox.abort(error)

    # ------------------------------------------------------------------ pumps

    async def _feed(self, commands: AsyncIterator[Command]) -> None:
        assert self._task is not None
        task = self._task
        idle_s = self._config.caller_idle_timeout_s
        pending = aiter(commands)
        try:
            while True:
                try:
                    async with asyncio.timeout(idle_s):
                        command = await anext(pending)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise CallerIdle(
                        f"no text and no finish for {idle_s:g}s; DashScope ends a task after "
                        f"{protocol.INPUT_TIMEOUT_S:g}s without text, so send finish (or "
                        "half-close) once the text is complete"
                    ) from exc
                if isinstance(command, Text):
                    await self._send_text(task, command.text)
                elif isinstance(command, Flush):
                    await task.flush()
                    self._deadlines.synthesis_requested()
                    await self._outbox.put_flushed()
                else:
                    break
            # Finish, or the caller half-closed: both mean no more text.
            if task.state is protocol.TaskState.STREAMING:
                if self._texts_sent == 0:
                    raise InvalidRequest("text", "the stream carried no text")
                await task.finish()
                self._deadlines.finish_sent()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the writer, which raises it
            await self._outbox.put_error(exc)

    def check_text(self, text: str, already_sent: int = 0) -> int:
        """Validate one fragment against DashScope's limits; return its counted length."""
        if not text:
            raise InvalidRequest("text", "must not be empty")
        count = protocol.count_characters(text, ssml=self._params.ssml)
        total = already_sent + count
        if total > protocol.MAX_CHARS_PER_TASK:
            raise InvalidRequest(
                "text",
                f"the stream would carry {total:,} characters, over DashScope's "
                f"{protocol.MAX_CHARS_PER_TASK:,}-character task limit (CJK ideographs count 2)",
            )
        if self._params.ssml and count > protocol.MAX_CHARS_PER_MESSAGE:
            raise InvalidRequest(
                "text",
                f"SSML text of {count} characters is over the "
                f"{protocol.MAX_CHARS_PER_MESSAGE:,}-character message limit",
            )
        return count

    async def _send_text(self, task: UpstreamTask, text: str) -> None:
        self.check_text(text, task.protocol.characters_sent)
        if self._params.ssml:
            # DashScope accepts exactly one continue-task with SSML (§5), so SSML
            # text cannot be split or sent in several fragments.
            if self._texts_sent:
                raise InvalidRequest("text", "SSML allows exactly one text fragment per stream")
            pieces = [text]
        else:
            pieces = protocol.split_text(text, protocol.MAX_CHARS_PER_MESSAGE)
        for piece in pieces:
            await task.send_text(piece)
        self._texts_sent += 1

    async def _read(self) -> None:
        assert self._task is not None
        assert self._lease is not None
        task, lease = self._task, self._lease
        try:
            while not task.state.is_over:
                event = await task.next_event()
                lease.touch()
                if isinstance(event, protocol.AudioReceived):
                    if task.state is not protocol.TaskState.CANCELLING:
                        if self._frames == 0:
                            self._first_audio_ms = (time.monotonic() - self._started_at) * 1000
                            self._deadlines.audio_started()
                        self._frames += 1
                        await self._outbox.put_audio(event.data)
                elif isinstance(event, protocol.SentenceEvent):
                    response = self._timings.response_for(event)
                    if response is not None:
                        await self._outbox.put_response(response)
                self._deadlines.frame_received()
            await self._outbox.put_done()
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._outbox.put_error(self._deadlines.error())
        except BaseException as exc:  # noqa: BLE001 - handed to the writer, which raises it
            await self._outbox.put_error(exc)

    def _on_overdue(self) -> None:
        if len(self._pumps) < 2 or self._pumps[1].done():
            return
        self._timed_out = True
        self._pumps[1].cancel()  # the reader turns this into the timeout error

    # --------------------------------------------------------------- cleanup

    async def _cleanup(self) -> None:
        self._deadlines.cancel()
        for pump in self._pumps:
            pump.cancel()
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._lease is None:
            return
        if self._task is not None and not self._task.state.is_over:
            self._cancelled = True
            reused = await self._task.cancel(self._config.cancel_timeout_s)
            log.info(
                "request %s: task %s cancelled upstream (connection %s)",
                self.request_id,
                self._task.task_id,
                "kept" if reused else "closed",
            )
        self._give_back(self._error)

    def _give_back(self, error: BaseException | None) -> None:
        """End the synthesis span and return the connection to the pool, traced."""
        assert self._lease is not None
        task = self._task
        if self._synthesis is not None:
            self._synthesis.end(
                finished=task is not None and task.state is protocol.TaskState.FINISHED,
                cancelled=self._cancelled,
                error=error,
                billed_characters=task.protocol.billed_characters if task else None,
                text_characters=task.protocol.characters_sent if task else 0,
                first_audio_ms=self._first_audio_ms or None,
                audio_bytes=self._outbox.audio_bytes,
                audio_chunks=self._outbox.chunks,
                sentences=self._timings.sentences,
            )
        connection = self._lease.connection
        with self._telemetry.returning(
            connection.id,
            kept=connection.reusable,
            cancelled=self._cancelled,
            error=error,
            held_s=time.monotonic() - self._borrowed_at,
        ):
            self._pool.release(connection)

"""The ``cosyvoice.sidecar.v1.Synthesizer`` servicer: requests in, a call, responses out.

Each RPC is one coroutine: it names the call (``x-request-id``), validates the
request, admits the call, runs it (:class:`~sidecar.call.Call`) and writes its
events (:class:`~sidecar.rpc._writer.ResponseWriter`) with
``context.write``, so an audio chunk passes no chain of generators. Errors
become statuses in :mod:`sidecar.rpc._statuses` only; an unexpected exception
is a bug, logged once with its traceback and answered INTERNAL.

Every call, refused or not, has a request id: the caller's ``x-request-id``
(else a generated one). It comes back in the response headers with the first
response, in the trailers of a call that fails before any response, in
``started.request_id``, and in every log line of the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc

from sidecar.call import Call, Command, Finish, Flush, Text, speakable
from sidecar.config import Config
from sidecar.errors import CallerIdle, InvalidRequest, PoolClosed, SidecarError, TooManyStreams
from sidecar.pool import Pool
from sidecar.protocol import MAX_CHARS_PER_TASK, count_characters
from sidecar.rpc._config import resolve
from sidecar.rpc._ending import abort_with, access_line, code_of, request_id_of
from sidecar.rpc._statuses import internal_status, retry_after_s, status_for
from sidecar.rpc._writer import ResponseWriter
from sidecar.telemetry import Telemetry, call_log_fields

__all__ = ["SynthesizerServicer"]

_Context = grpc.aio.ServicerContext[Any, pb.SynthesizeResponse]

log = logging.getLogger(__name__)

# UNAVAILABLE before any response (a dead socket, shutdown): another replica or a
# fresh connection is likely to serve at once.
_UNAVAILABLE_PUSHBACK_S: Final = 0.2


class SynthesizerServicer(pb_grpc.SynthesizerServicer):
    """Serves both RPCs from one pool; admits at most ``max_streams`` calls at once."""

    def __init__(self, pool: Pool, config: Config, *, telemetry: Telemetry | None = None) -> None:
        self._pool = pool
        self._telemetry = telemetry or Telemetry.disabled()
        self._config = config
        self._upstream_host = urlsplit(config.upstream_url).hostname or "dashscope"
        self._active: set[Call] = set()
        # Streams still waiting for their config (up to caller_idle_timeout_s): they hold a
        # stream already, so they count toward max_streams too.
        self._opening = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False

    def __repr__(self) -> str:
        return (
            f"<SynthesizerServicer active={len(self._active)} opening={self._opening} "
            f"draining={self._draining}>"
        )

    @property
    def active_calls(self) -> int:
        return len(self._active)

    @property
    def opening_calls(self) -> int:
        """Streams open but still waiting for their config."""
        return self._opening

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        """Refuse new calls (UNAVAILABLE) from now on; running ones go on."""
        self._draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every running call to end; return whether they did."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def abort_all(self, error: SidecarError) -> None:
        """End every running call with ``error`` (their upstream tasks are stopped)."""
        for call in list(self._active):
            call.abort(error)

    # -------------------------------------------------------------------- RPCs

    async def Synthesize(  # type: ignore[override]
        self, request: pb.SynthesizeRequest, context: _Context
    ) -> None:
        async def commands() -> AsyncIterator[Command]:
            yield Text(request.text)
            yield Finish()

        def prepare(request_id: str) -> Call:
            _check_whole_text(request.text, ssml=request.config.enable_ssml)
            return self._call(request.config, request_id)

        await self._serve("Synthesize", prepare, commands(), context)

    async def StreamingSynthesize(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.StreamingSynthesizeRequest], context: _Context
    ) -> None:
        idle_s = self._config.caller_idle_timeout_s
        first: pb.StreamingSynthesizeRequest | None = None
        silent = False
        undecodable: InvalidRequest | None = None
        # Only a flood of silent streams is refused before its first message: an ordinary
        # refusal waits for the config, so the caller's first write does not race it (the
        # grpcio asyncio client turns that race into INTERNAL, grpc/grpc#36066).
        full = self._opening >= self._config.max_streams
        if not full:
            self._opening += 1
            try:
                async with asyncio.timeout(idle_s):  # a silent caller holds nothing for long
                    first = await anext(aiter(request_iterator), None)
            except TimeoutError:
                silent = True
            except InvalidRequest as exc:  # the first message did not decode (rpc._guard)
                undecodable = exc
            finally:
                self._opening -= 1

        def prepare(request_id: str) -> Call:
            if full:
                raise self._too_many()
            if undecodable is not None:
                raise undecodable
            if silent:
                raise CallerIdle(f"no config within {idle_s:g}s of opening the stream")
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidRequest("config", "the first request must carry the config")
            return self._call(first.config, request_id)

        await self._serve("StreamingSynthesize", prepare, _commands(request_iterator), context)

    # ---------------------------------------------------------------- one call

    def _call(self, config: pb.SynthesisConfig, request_id: str) -> Call:
        params = resolve(config, self._config)
        return Call(
            self._pool, self._config, params, request_id=request_id, telemetry=self._telemetry
        )

    async def _serve(
        self,
        method: str,
        prepare: Callable[[str], Call],
        commands: AsyncIterator[Command],
        context: _Context,
    ) -> None:
        request_id = request_id_of(context)
        self._telemetry.tag_call(request_id)
        started_at = time.monotonic()
        call: Call | None = None
        writer: ResponseWriter | None = None
        code = grpc.StatusCode.OK
        with call_log_fields(request_id=request_id) as fields:
            try:
                call = prepare(request_id)
                self._admit(call)
                writer = ResponseWriter(
                    context,
                    call,
                    batch_ms=self._config.audio_batch_ms,
                    read_timeout_s=self._config.caller_read_timeout_s,
                    metadata=(("x-request-id", request_id),),
                )
                remaining = context.time_remaining()
                async with call.running(commands, acquire_timeout=remaining) as started:
                    fields["task_id"] = started.task_id
                    await writer.started(started)
                    await writer.run()
            except SidecarError as exc:
                status = status_for(exc, self._upstream_host)
                code = code_of(status.code)
                log.info("%s: %s", code.name, exc)
                await abort_with(context, status, request_id, _pushback(exc, code, writer))
            except asyncio.CancelledError:
                code = _cancelled_code(context)
                raise
            except Exception as exc:
                log.exception("unexpected error")
                code = grpc.StatusCode.INTERNAL
                await abort_with(context, internal_status(exc), request_id)
            finally:
                if writer is not None:
                    writer.close()
                if call is not None:
                    self._active.discard(call)
                    if not self._active:
                        self._idle.set()
                    fields["dashscope_request_uuid"] = call.request_uuid
                access_line(method, code, started_at, call)

    def _full(self) -> bool:
        return len(self._active) + self._opening >= self._config.max_streams

    def _too_many(self) -> TooManyStreams:
        return TooManyStreams(
            f"{self._config.max_streams} calls are running or opening, the most this sidecar "
            "admits",
            retry_after_s=0.5,
        )

    def _admit(self, call: Call) -> None:
        if self._draining:
            raise PoolClosed("the sidecar is shutting down; retry on another instance")
        if self._full():
            raise self._too_many()
        self._active.add(call)
        self._idle.clear()


def _pushback(
    exc: SidecarError, code: grpc.StatusCode, writer: ResponseWriter | None
) -> float | None:
    """The delay a gRPC retry policy should wait, for a call nothing reached the caller of.

    Once a response went out the call is committed: clients never retry it,
    and must not (its text may have been spoken and billed).
    """
    if writer is not None and writer.wrote_response:
        return None
    delay = retry_after_s(exc)
    if delay is None and code is grpc.StatusCode.UNAVAILABLE:
        return _UNAVAILABLE_PUSHBACK_S
    return delay


def _cancelled_code(context: _Context) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _check_whole_text(text: str, *, ssml: bool) -> None:
    """Validate the text of Synthesize before anything goes upstream."""
    if not speakable(text):
        raise InvalidRequest("text", "has nothing to speak: it needs at least one letter or digit")
    count = count_characters(text, ssml=ssml)
    if count > MAX_CHARS_PER_TASK:
        raise InvalidRequest(
            "text",
            f"{count:,} characters, over DashScope's {MAX_CHARS_PER_TASK:,}-character task "
            "limit (CJK ideographs count 2)",
        )


async def _commands(
    requests: AsyncIterator[pb.StreamingSynthesizeRequest],
) -> AsyncIterator[Command]:
    """Turn the request stream (after the config) into commands, validating each.

    The stream's end (a half-close) just ends the commands: the call takes it
    as finish, at once. A caller that hung up instead is cancelled by gRPC.
    """
    async for request in requests:
        kind = request.WhichOneof("request")
        if kind == "text":
            yield Text(request.text)
        elif kind == "flush":
            yield Flush()
        elif kind == "finish":
            yield Finish()
        elif kind == "config":
            raise InvalidRequest("config", "only the first request may carry the config")
        else:
            raise InvalidRequest("request", "a request must set config, text, flush or finish")

"""The gRPC face of the sidecar: the ``cosyvoice.sidecar.v1.Synthesizer`` servicer.

This is the only place where errors become gRPC statuses (:data:`STATUS_TABLE`
and :func:`status_for`), with ``google.rpc`` rich details (ErrorInfo,
RetryInfo, BadRequest) attached through grpcio-status.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sidecar.config import Config
from sidecar.errors import (
    CallerCancelled,
    CallerIdle,
    InvalidRequest,
    PoolClosed,
    PoolExhausted,
    SidecarError,
    TooManyStreams,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTaskFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.params import resolve
from sidecar.pool import Pool
from sidecar.session import Command, Finish, Flush, Session, Text
from sidecar.telemetry import Telemetry

__all__ = [
    "PUSHBACK_KEY",
    "STATUS_TABLE",
    "SynthesizerServicer",
    "retry_delay_s",
    "retry_trailers",
    "status_for",
]

_Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

ERROR_DOMAIN: Final = "cosyvoice-sidecar"
# gRPC's retry pushback (A6): clients with a retry policy wait this many ms, then retry.
PUSHBACK_KEY: Final = "grpc-retry-pushback-ms"
# Seconds to wait after DashScope throttled a task (it gives no hint of its own).
_THROTTLED_RETRY_S: Final = 1.0
# Seconds to wait after an UNAVAILABLE before any audio: short, the next attempt
# gets a fresh upstream connection (or another sidecar).
_UNAVAILABLE_RETRY_S: Final = 0.2
_MAX_REQUEST_ID = 128
# How many times (1 ms apart) a request stream's end is checked for a hang-up.
_HANGUP_CHECKS: Final = 5

# Sidecar errors → gRPC codes. The README's error table mirrors this one.
STATUS_TABLE: Final[dict[type[SidecarError], grpc.StatusCode]] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    CallerIdle: grpc.StatusCode.FAILED_PRECONDITION,
    CallerCancelled: grpc.StatusCode.CANCELLED,
    TooManyStreams: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PoolExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PoolClosed: grpc.StatusCode.UNAVAILABLE,
    UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
    UpstreamTimeout: grpc.StatusCode.UNAVAILABLE,
    # The sidecar's own credentials are wrong: callers cannot fix it by retrying.
    UpstreamAuthError: grpc.StatusCode.FAILED_PRECONDITION,
}

# DashScope task-failed error codes (§9) → gRPC codes; prefixes match families.
UPSTREAM_CODE_TABLE: Final[tuple[tuple[str, grpc.StatusCode], ...]] = (
    ("InvalidParameter", grpc.StatusCode.INVALID_ARGUMENT),
    ("InvalidPayload", grpc.StatusCode.INVALID_ARGUMENT),
    ("DataInspectionFailed", grpc.StatusCode.INVALID_ARGUMENT),
    ("Throttling", grpc.StatusCode.RESOURCE_EXHAUSTED),
    # 23 s without text (§7): the caller stopped sending without finishing.
    ("CLIENT_ERROR", grpc.StatusCode.FAILED_PRECONDITION),
    ("InvalidApiKey", grpc.StatusCode.FAILED_PRECONDITION),
    ("AccessDenied", grpc.StatusCode.FAILED_PRECONDITION),
    ("Arrearage", grpc.StatusCode.FAILED_PRECONDITION),
    ("InternalError", grpc.StatusCode.UNAVAILABLE),
    ("ServiceUnavailable", grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: SidecarError, upstream_host: str = "dashscope") -> status_pb2.Status:
    """Return the ``google.rpc.Status`` (code, message, details) for a sidecar error.

    Upstream task failures carry an ``ErrorInfo`` whose reason is DashScope's
    error code and whose domain is the upstream host.
    """
    details: list[any_pb2.Any] = []
    if isinstance(exc, UpstreamTaskFailed):
        code = next(
            (c for prefix, c in UPSTREAM_CODE_TABLE if exc.code.startswith(prefix)),
            grpc.StatusCode.UNKNOWN,
        )
        details.append(_pack(error_details_pb2.ErrorInfo(reason=exc.code, domain=upstream_host)))
        if (delay := retry_delay_s(exc)) is not None:
            details.append(_retry_info(delay))
    else:
        code = next(
            (c for kind, c in STATUS_TABLE.items() if isinstance(exc, kind)),
            grpc.StatusCode.UNAVAILABLE
            if isinstance(exc, UpstreamError)
            else grpc.StatusCode.INTERNAL,
        )
        if isinstance(exc, InvalidRequest):
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=exc.field, description=exc.message
            )
            details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
        elif (delay := retry_delay_s(exc)) is not None:
            details.append(_retry_info(delay))
        details.append(
            _pack(error_details_pb2.ErrorInfo(reason=type(exc).__name__, domain=ERROR_DOMAIN))
        )
    return status_pb2.Status(code=code.value[0], message=str(exc), details=details)


def retry_delay_s(exc: SidecarError) -> float | None:
    """Return how long the caller should wait before retrying, or None if no hint applies.

    The ``RetryInfo`` detail and the ``grpc-retry-pushback-ms`` trailer both say this.
    """
    if isinstance(exc, PoolExhausted | TooManyStreams):
        return exc.retry_after_s
    if isinstance(exc, UpstreamTaskFailed) and exc.code.startswith("Throttling"):
        return _THROTTLED_RETRY_S
    return None


def retry_trailers(
    status: status_pb2.Status, exc: SidecarError, *, audio_sent: bool
) -> list[tuple[str, str]]:
    """Return the ``grpc-retry-pushback-ms`` trailer for a failed call, if it should have one.

    gRPC clients with a retry policy retry a call that failed before any
    response headers (the servicer sends none before the first response) with
    a retryable code; the pushback replaces their own backoff (gRFC A6).
    RESOURCE_EXHAUSTED carries the delay of its ``RetryInfo``; UNAVAILABLE
    before any audio a short one, since no audio can have been played twice.
    """
    delay = retry_delay_s(exc)
    if delay is None and status.code == grpc.StatusCode.UNAVAILABLE.value[0] and not audio_sent:
        delay = _UNAVAILABLE_RETRY_S
    if delay is None:
        return []
    return [(PUSHBACK_KEY, str(round(delay * 1000)))]


def _pack(
    message: error_details_pb2.ErrorInfo
    | error_details_pb2.BadRequest
    | error_details_pb2.RetryInfo,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _retry_info(seconds: float) -> any_pb2.Any:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return _pack(error_details_pb2.RetryInfo(retry_delay=delay))


class SynthesizerServicer(pb_grpc.SynthesizerServicer):
    """Serves both RPCs from one pool; admits at most ``max_streams`` calls at once."""

    def __init__(self, pool: Pool, config: Config, *, telemetry: Telemetry | None = None) -> None:
        self._pool = pool
        self._telemetry = telemetry or Telemetry.disabled()
        self._config = config
        self._upstream_host = urlsplit(config.upstream_url).hostname or "dashscope"
        self._active: set[Session] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False

    def __repr__(self) -> str:
        return f"<SynthesizerServicer active={len(self._active)} draining={self._draining}>"

    @property
    def active_calls(self) -> int:
        return len(self._active)

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
        """End every running call with ``error`` (their upstream tasks are cancelled)."""
        for session in list(self._active):
            session.abort(error)

    async def Synthesize(
        self,
        request: pb.SynthesizeRequest,
        context: grpc.aio.ServicerContext[pb.SynthesizeRequest, pb.SynthesizeResponse],
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        async def commands() -> AsyncIterator[Command]:
            yield Text(request.text)
            yield Finish()

        def prepare() -> Session:
            session = self._session(request.config, context)
            session.check_text(request.text)  # before anything goes upstream
            return session

        async for response in self._serve(prepare, commands(), context):
            yield response

    async def StreamingSynthesize(
        self,
        request_iterator: AsyncIterator[pb.StreamingSynthesizeRequest],
        context: grpc.aio.ServicerContext[pb.StreamingSynthesizeRequest, pb.SynthesizeResponse],
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        idle_s = self._config.caller_idle_timeout_s
        first: pb.StreamingSynthesizeRequest | None = None
        silent = False
        try:
            async with asyncio.timeout(idle_s):  # a silent caller holds nothing for long
                first = await anext(aiter(request_iterator), None)
        except TimeoutError:
            silent = True

        def prepare() -> Session:
            if silent:
                raise CallerIdle(f"no config within {idle_s:g}s of opening the stream")
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidRequest("config", "the first request must carry the config")
            return self._session(first.config, context)

        commands = _commands(request_iterator, context)
        async for response in self._serve(prepare, commands, context):
            yield response

    def _session(self, config: pb.SynthesisConfig, context: _Context) -> Session:
        params = resolve(config, self._config)
        request_id = _request_id(context)
        self._telemetry.tag_call(request_id)
        return Session(
            self._pool, self._config, params, request_id=request_id, telemetry=self._telemetry
        )

    async def _serve(
        self,
        prepare: Callable[[], Session],
        commands: AsyncIterator[Command],
        context: _Context,
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        session: Session | None = None
        # No response headers before the first response: a call that fails
        # before it is still uncommitted, so gRPC clients may retry it (A6).
        headers_sent = False
        audio_sent = False
        try:
            session = prepare()
            self._admit(session)
            remaining = context.time_remaining()
            async for response in session.run(commands, acquire_timeout=remaining):
                if not headers_sent:
                    await context.send_initial_metadata((("x-request-id", session.request_id),))
                    headers_sent = True
                if not audio_sent:
                    audio_sent = response.HasField("audio")
                yield response
        except SidecarError as exc:
            status = status_for(exc, self._upstream_host)
            request_id = session.request_id if session else _request_id(context)
            log.info(
                "request %s: %s (task %s): %s",
                request_id,
                _code_name(status.code),
                (session.task_id if session else None) or getattr(exc, "task_id", "") or "-",
                exc,
            )
            rich = rpc_status.to_status(status)
            trailers = [
                *rich.trailing_metadata,
                *retry_trailers(status, exc, audio_sent=audio_sent),
            ]
            if not headers_sent:
                trailers.append(("x-request-id", request_id))  # a refused call keeps its id
            await context.abort(rich.code, rich.details, tuple(trailers))
        finally:
            if session is not None:
                self._active.discard(session)
                if not self._active:
                    self._idle.set()

    def _admit(self, session: Session) -> None:
        if self._draining:
            raise PoolClosed("the sidecar is shutting down; retry on another instance")
        if len(self._active) >= self._config.max_streams:
            raise TooManyStreams(
                f"{self._config.max_streams} calls are running, the most this sidecar admits",
                retry_after_s=0.5,
            )
        self._active.add(session)
        self._idle.clear()


def _code_name(code: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


async def _commands(
    requests: AsyncIterator[pb.StreamingSynthesizeRequest], context: _Context
) -> AsyncIterator[Command]:
    """Turn the request stream (after the config) into commands, validating each."""
    async for request in requests:
        kind = request.WhichOneof("request")
        if kind == "text":
            yield Text(request.text)
        elif kind == "flush":
            yield Flush()
        elif kind == "finish":
            yield Finish()
            return
        elif kind == "config":
            raise InvalidRequest("config", "only the first request may carry the config")
        else:
            raise InvalidRequest("request", "a request must set config, text, flush or finish")
    # The stream ended without finish: a half-close (finish), or the caller hung up.
    # grpc ends the request stream of a cancelled call like a half-close and may
    # mark the call cancelled a moment later: look again before finishing, so a
    # hang-up never makes DashScope synthesize (and bill) the rest of the text.
    for _ in range(_HANGUP_CHECKS):
        if context.cancelled() or context.done():
            raise CallerCancelled("the caller cancelled the call")
        await asyncio.sleep(0.001)


def _request_id(context: _Context) -> str:
    """Return the caller's ``x-request-id`` if it is sane, else a fresh one."""
    for key, value in context.invocation_metadata() or ():
        if (
            key == "x-request-id"
            and isinstance(value, str)
            and 0 < len(value) <= _MAX_REQUEST_ID
            and value.isprintable()
        ):
            return value
    return uuid.uuid4().hex

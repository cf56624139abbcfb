"""The gRPC face of the sidecar: the ``cosyvoice.sidecar.v1.Synthesizer`` servicer.

This is the only place where errors become gRPC statuses (:data:`STATUS_TABLE`
and :func:`status_for`), with ``google.rpc`` rich details (ErrorInfo,
RetryInfo, BadRequest) attached through grpcio-status.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sidecar.config import Config
from sidecar.errors import (
    InvalidRequest,
    PoolClosed,
    PoolExhausted,
    SidecarError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTaskFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.params import resolve
from sidecar.pool import Pool
from sidecar.session import Command, Finish, Flush, Session, Text

__all__ = ["STATUS_TABLE", "SynthesizerServicer", "status_for"]

_Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

ERROR_DOMAIN: Final = "cosyvoice-sidecar"
_MAX_REQUEST_ID = 128

# Sidecar errors → gRPC codes. The README's error table mirrors this one.
STATUS_TABLE: Final[dict[type[SidecarError], grpc.StatusCode]] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
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


def status_for(exc: SidecarError) -> status_pb2.Status:
    """Return the ``google.rpc.Status`` (code, message, details) for a sidecar error."""
    details: list[any_pb2.Any] = []
    if isinstance(exc, UpstreamTaskFailed):
        code = next(
            (c for prefix, c in UPSTREAM_CODE_TABLE if exc.code.startswith(prefix)),
            grpc.StatusCode.UNKNOWN,
        )
        details.append(_pack(error_details_pb2.ErrorInfo(reason=exc.code, domain="dashscope")))
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            details.append(_retry_info(1.0))
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
        elif isinstance(exc, PoolExhausted):
            details.append(_retry_info(exc.retry_after_s))
        details.append(
            _pack(error_details_pb2.ErrorInfo(reason=type(exc).__name__, domain=ERROR_DOMAIN))
        )
    return status_pb2.Status(code=code.value[0], message=str(exc), details=details)


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
    """Serves both RPCs from one pool."""

    def __init__(self, pool: Pool, config: Config) -> None:
        self._pool = pool
        self._config = config

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
        first = await anext(aiter(request_iterator), None)

        def prepare() -> Session:
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidRequest("config", "the first request must carry the config")
            return self._session(first.config, context)

        async for response in self._serve(prepare, _commands(request_iterator), context):
            yield response

    def _session(self, config: pb.SynthesisConfig, context: _Context) -> Session:
        params = resolve(config, self._config)
        return Session(self._pool, self._config, params, request_id=_request_id(context))

    async def _serve(
        self,
        prepare: Callable[[], Session],
        commands: AsyncIterator[Command],
        context: _Context,
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        session: Session | None = None
        try:
            session = prepare()
            await context.send_initial_metadata((("x-request-id", session.request_id),))
            remaining = context.time_remaining()
            async for response in session.run(commands, acquire_timeout=remaining):
                yield response
        except SidecarError as exc:
            status = status_for(exc)
            request_id = session.request_id if session else "-"
            log.info(
                "request %s: %s (task %s): %s",
                request_id,
                grpc.StatusCode(_code_tuple(status.code)).name,
                session.task_id if session else "-",
                exc,
            )
            await context.abort_with_status(rpc_status.to_status(status))


def _code_tuple(code: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == code)


async def _commands(
    requests: AsyncIterator[pb.StreamingSynthesizeRequest],
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

"""How a call ends, whoever ends it: its request id, its status and trailers, its access line.

The servicer ends its calls here, and so do the interceptors that refuse a
call before it reaches the servicer (:mod:`~sidecar.rpc._auth`,
:mod:`~sidecar.rpc._guard`): every call has a request id (the caller's
``x-request-id``, else a generated one), every status comes from the error
table (:mod:`~sidecar.rpc._statuses`) with its details in
``grpc-status-details-bin`` and ``x-request-id`` in the trailers, and every
call ends with one access line naming its request id.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Final

import grpc

from sidecar.call import Call
from sidecar.errors import SidecarError
from sidecar.rpc._statuses import status_for
from sidecar.telemetry import call_log_fields

__all__ = ["PUSHBACK_KEY", "abort_with", "access_line", "code_of", "refuse", "request_id_of"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("sidecar.access")

_Context = grpc.aio.ServicerContext[Any, Any]

_MAX_REQUEST_ID: Final = 128
_STATUS_DETAILS: Final = "grpc-status-details-bin"
# gRPC's retry pushback (A6): a client with a retry policy waits this long.
PUSHBACK_KEY: Final = "grpc-retry-pushback-ms"


def request_id_of(context: _Context) -> str:
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


async def abort_with(
    context: _Context, status: Any, request_id: str, pushback_s: float | None = None
) -> None:
    """End the call with ``status`` (a google.rpc.Status), its details and our trailers."""
    trailers: list[tuple[str, str | bytes]] = [
        (_STATUS_DETAILS, status.SerializeToString()),
        ("x-request-id", request_id),
    ]
    if pushback_s is not None:
        trailers.append((PUSHBACK_KEY, str(int(pushback_s * 1000))))
    await context.abort(code_of(status.code), status.message, trailing_metadata=tuple(trailers))


async def refuse(context: _Context, error: SidecarError, method: str, started_at: float) -> None:
    """End a call no servicer ran with ``error``'s status: named, detailed and logged.

    ``method`` is the full gRPC method name; the access line gives its last part.
    """
    request_id = request_id_of(context)
    code = grpc.StatusCode.UNKNOWN
    with call_log_fields(request_id=request_id):
        try:
            status = status_for(error)
            code = code_of(status.code)
            log.info("%s: %s", code.name, error)
            await abort_with(context, status, request_id)
        finally:
            access_line(method.rsplit("/", 1)[-1], code, started_at, None)


def code_of(value: int) -> grpc.StatusCode:
    """The :class:`grpc.StatusCode` of a numeric status code."""
    return next(c for c in grpc.StatusCode if c.value[0] == value)


def access_line(method: str, code: grpc.StatusCode, started_at: float, call: Call | None) -> None:
    """One line per call at info: what a log pipeline needs to query calls."""
    duration_ms = (time.monotonic() - started_at) * 1000
    fields: dict[str, Any] = {
        "rpc_method": method,
        "grpc_code": code.name,
        "duration_ms": duration_ms,
    }
    if call is not None:
        fields.update(
            pool_wait_ms=call.pool_wait_ms,
            audio_bytes=call.delivery.audio_bytes,
            billed_characters=call.billed_characters,
            first_audio_ms=call.first_audio_ms,
        )
    access_log.info("%s %s in %.1f ms", method, code.name, duration_ms, extra={"call": fields})

"""The one place where errors become gRPC statuses: the sidecar's own, and DashScope's codes.

Every status carries a ``google.rpc.ErrorInfo`` (reason: the sidecar's error
class, or DashScope's ``error_code`` with the upstream host as its domain);
bad requests add a ``BadRequest`` naming the field; what a caller may retry
after a pause adds a ``RetryInfo``. :data:`UPSTREAM_CODES` is DashScope's
error-code page (docs/dashscope-protocol.md §13) as data: one row per code or
family, with the status and whether to retry; the README's error table is
checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from sidecar.errors import (
    CallerIdle,
    CallerStalled,
    InvalidRequest,
    Overloaded,
    PoolClosed,
    SidecarError,
    Unauthenticated,
    UpstreamAuthError,
    UpstreamError,
    UpstreamTaskFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.fleet import FleetUnavailable

__all__ = [
    "ERROR_DOMAIN",
    "SIDECAR_ERRORS",
    "UPSTREAM_CODES",
    "UpstreamCode",
    "internal_status",
    "retry_after_s",
    "status_for",
    "upstream_rule",
]

ERROR_DOMAIN: Final = "cosyvoice-sidecar"
Code = grpc.StatusCode

# The sidecar's own errors (sidecar.errors) -> gRPC codes; the first match wins.
SIDECAR_ERRORS: Final[tuple[tuple[type[SidecarError], grpc.StatusCode], ...]] = (
    (InvalidRequest, Code.INVALID_ARGUMENT),
    (Unauthenticated, Code.UNAUTHENTICATED),
    (CallerIdle, Code.FAILED_PRECONDITION),
    (CallerStalled, Code.FAILED_PRECONDITION),
    (Overloaded, Code.RESOURCE_EXHAUSTED),  # TooManyStreams, PoolExhausted, FleetExhausted
    (FleetUnavailable, Code.UNAVAILABLE),
    (PoolClosed, Code.UNAVAILABLE),
    (UpstreamUnavailable, Code.UNAVAILABLE),
    (UpstreamTimeout, Code.UNAVAILABLE),
    # The sidecar's own credentials are wrong: callers cannot fix it by retrying.
    (UpstreamAuthError, Code.FAILED_PRECONDITION),
)


@dataclass(frozen=True)
class UpstreamCode:
    """One row of DashScope's error codes: how a caller should take it.

    ``code`` matches exactly, or as a family when it ends in ``*``
    (``BadRequest.*``); ``message`` (when set) must occur in the error message.
    ``retry_after_s`` is the RetryInfo hint; None means retrying cannot help.
    """

    code: str
    status: grpc.StatusCode
    retry_after_s: float | None
    meaning: str
    message: str = ""

    def matches(self, code: str, message: str) -> bool:
        if self.message and self.message not in message:
            return False
        if self.code.endswith("*"):
            return code.startswith(self.code[:-1])
        return code == self.code


# First match wins: rows with a message, and exact codes, before their families.
UPSTREAM_CODES: Final = (
    UpstreamCode(
        "CLIENT_ERROR",
        Code.FAILED_PRECONDITION,
        None,
        "no text for 23 s: send finish (or half-close) once the text is complete",
    ),
    UpstreamCode(
        "InvalidParameter",
        Code.FAILED_PRECONDITION,
        None,
        "no text for 23 s (the error-code page's form of the input timeout)",
        message="request timeout after 23 seconds",
    ),
    UpstreamCode("Throttling", Code.RESOURCE_EXHAUSTED, 1.0, "rate limit: retry with backoff"),
    UpstreamCode(
        "Throttling.RateQuota", Code.RESOURCE_EXHAUSTED, 1.0, "rate limit: retry with backoff"
    ),
    UpstreamCode(
        "Throttling.BurstRate",
        Code.RESOURCE_EXHAUSTED,
        2.0,
        "task starts ramped up too fast: retry with backoff",
    ),
    UpstreamCode(
        "Throttling.AllocationQuota",
        Code.FAILED_PRECONDITION,
        None,
        "the free allocated quota is used up: no retry until the account changes",
    ),
    UpstreamCode(
        "AllocationQuota.FreeTierOnly",
        Code.FAILED_PRECONDITION,
        None,
        "the account is limited to the free tier, now used up",
    ),
    UpstreamCode("Arrearage", Code.FAILED_PRECONDITION, None, "the account is in arrears"),
    UpstreamCode(
        "CommodityNotPurchased", Code.FAILED_PRECONDITION, None, "the model is not purchased"
    ),
    UpstreamCode("PrepaidBillOverdue", Code.FAILED_PRECONDITION, None, "a prepaid bill is overdue"),
    UpstreamCode(
        "PostpaidBillOverdue", Code.FAILED_PRECONDITION, None, "a postpaid bill is overdue"
    ),
    UpstreamCode("InvalidApiKey", Code.FAILED_PRECONDITION, None, "the sidecar's API key"),
    UpstreamCode(
        "Model.AccessDenied", Code.FAILED_PRECONDITION, None, "the key may not use this model"
    ),
    UpstreamCode(
        "Workspace.AccessDenied",
        Code.FAILED_PRECONDITION,
        None,
        "the key may not use this workspace",
    ),
    UpstreamCode(
        "Endpoint.AccessDenied",
        Code.FAILED_PRECONDITION,
        None,
        "the key may not use this endpoint",
    ),
    UpstreamCode("AccessDenied*", Code.FAILED_PRECONDITION, None, "permission refused"),
    UpstreamCode("ModelNotFound", Code.NOT_FOUND, None, "no such model"),
    UpstreamCode("Model.NotExist", Code.NOT_FOUND, None, "no such model"),
    UpstreamCode(
        "InvalidParameter",
        Code.INVALID_ARGUMENT,
        None,
        "bad request, e.g. an unknown voice or a voice of another model generation (418)",
    ),
    UpstreamCode("InvalidPayload", Code.INVALID_ARGUMENT, None, "bad request"),
    UpstreamCode("BadRequest*", Code.INVALID_ARGUMENT, None, "bad request"),
    UpstreamCode(
        "DataInspectionFailed", Code.INVALID_ARGUMENT, None, "the text failed content moderation"
    ),
    UpstreamCode(
        "InternalError",
        Code.INVALID_ARGUMENT,
        None,
        "often a voice that does not exist",
        message="Remote cancelled grpc stream",
    ),
    UpstreamCode("InternalError", Code.UNAVAILABLE, 1.0, "server side, transient"),
    UpstreamCode("SystemError", Code.UNAVAILABLE, 1.0, "server side, transient"),
    UpstreamCode("ModelServingError", Code.UNAVAILABLE, 1.0, "server side, transient"),
    UpstreamCode("ModelUnavailable", Code.UNAVAILABLE, 1.0, "server side, transient"),
    UpstreamCode("ServiceUnavailable", Code.UNAVAILABLE, 1.0, "server side, transient"),
    UpstreamCode("RequestTimeOut", Code.UNAVAILABLE, 1.0, "server side, transient"),
    UpstreamCode("GatewayTimeout", Code.UNAVAILABLE, 1.0, "server side, transient"),
    UpstreamCode("ClientDisconnect", Code.CANCELLED, None, "DashScope saw the client go away"),
)
# Any other DashScope code: the caller cannot tell whether retrying helps.
UNKNOWN_CODE: Final = UpstreamCode("*", Code.UNKNOWN, None, "any other code")


def upstream_rule(code: str, message: str = "") -> UpstreamCode:
    """Return the row of :data:`UPSTREAM_CODES` for a DashScope code (or the default)."""
    return next((row for row in UPSTREAM_CODES if row.matches(code, message)), UNKNOWN_CODE)


def retry_after_s(exc: SidecarError) -> float | None:
    """How long a caller should wait before retrying after ``exc``; None: retrying cannot help."""
    if isinstance(exc, UpstreamTaskFailed):
        return upstream_rule(exc.code, exc.message).retry_after_s
    if isinstance(exc, Overloaded):
        return exc.retry_after_s
    return None


def status_for(exc: SidecarError, upstream_host: str = "dashscope") -> status_pb2.Status:
    """Return the ``google.rpc.Status`` (code, message, details) for a sidecar error."""
    details: list[any_pb2.Any] = []
    if isinstance(exc, UpstreamTaskFailed):
        code = upstream_rule(exc.code, exc.message).status
        # What Alibaba Cloud support asks for, should the caller open a ticket.
        metadata = {"task_id": exc.task_id, "request_uuid": exc.request_uuid}
        info = error_details_pb2.ErrorInfo(
            reason=exc.code, domain=upstream_host, metadata={k: v for k, v in metadata.items() if v}
        )
        details.append(_pack(info))
    else:
        code = next(
            (c for kind, c in SIDECAR_ERRORS if isinstance(exc, kind)),
            Code.UNAVAILABLE if isinstance(exc, UpstreamError) else Code.INTERNAL,
        )
        if isinstance(exc, InvalidRequest):
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=exc.field, description=exc.message
            )
            details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
        details.append(
            _pack(error_details_pb2.ErrorInfo(reason=type(exc).__name__, domain=ERROR_DOMAIN))
        )
    delay = retry_after_s(exc)
    if delay is not None:
        details.append(_retry_info(delay))
    return status_pb2.Status(code=code.value[0], message=str(exc), details=details)


def internal_status(exc: BaseException) -> status_pb2.Status:
    """The status of a bug: INTERNAL, naming only the exception's class (details are logged)."""
    info = error_details_pb2.ErrorInfo(reason=type(exc).__name__, domain=ERROR_DOMAIN)
    return status_pb2.Status(
        code=Code.INTERNAL.value[0],
        message=f"internal error in the sidecar ({type(exc).__name__}); see its log",
        details=[_pack(info)],
    )


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

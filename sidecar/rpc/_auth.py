"""Optional bearer-token authentication of callers.

When ``COSYVOICE_SIDECAR_AUTH_TOKEN[_FILE]`` is set, every call except the
health service must carry ``authorization: Bearer <token>`` metadata; others
are refused with UNAUTHENTICATED before they reach the servicer (or the pool),
a refusal like any other (:func:`~sidecar.rpc._ending.refuse`): the error
table's details, ``x-request-id`` in the trailers, an access line; neither
the token nor what the caller sent appears in any of them. Health stays open
because Kubernetes' gRPC probes cannot send metadata.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc

from sidecar.config import Secret
from sidecar.errors import Unauthenticated
from sidecar.rpc._ending import refuse

__all__ = ["BearerTokenInterceptor"]

_OPEN_PREFIXES: Final = ("/grpc.health.v1.Health/",)
_SCHEME: Final = "bearer "

_Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose ``authorization`` metadata does not hold the token."""

    def __init__(self, token: Secret) -> None:
        self._expected = token.reveal().encode()

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        if self._authorized(handler_call_details.invocation_metadata or ()):
            return handler
        return _refusal(handler, method)

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                # The scheme is case-insensitive (RFC 7235); the token is compared
                # in constant time so its bytes cannot be guessed by timing.
                if value[: len(_SCHEME)].lower() != _SCHEME:
                    return False
                return hmac.compare_digest(value[len(_SCHEME) :].strip().encode(), self._expected)
        return False


def _unread(data: bytes) -> None:
    return None


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that only refuses."""

    async def refuse_call(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        error = Unauthenticated("missing or wrong bearer token in the 'authorization' metadata")
        await refuse(context, error, method, time.monotonic())

    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refuse_call(context)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refuse_call(context)
        yield  # pragma: no cover - abort raises; this only makes it a generator

    # The request is never decoded: an unauthenticated caller's bytes, garbage
    # or not, cost no parsing and leave no trace beyond the refusal.
    deserializer = _unread
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, deserializer, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse_unary, deserializer, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(refuse_unary, deserializer, serializer)

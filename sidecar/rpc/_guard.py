"""Requests that do not decode get INVALID_ARGUMENT, on every method, without a traceback.

grpc.aio decodes a request before the handler runs, and a decode error (bytes
that are not the message, invalid UTF-8 in a string field) escapes as UNKNOWN
with a traceback logged per request: anyone could flood the log. The
:class:`DecodeGuard` interceptor gives every handler a deserializer that does
not raise, and answers INVALID_ARGUMENT, naming the message type, in place of
a handler that would have received a request it cannot read: a refusal like
any other (:func:`~sidecar.rpc._ending.refuse`), with the error table's
details, ``x-request-id`` in the trailers and an access line. The servicer
refuses an undecodable first message of ``StreamingSynthesize`` itself, and
a later one fails its call, both through the same table.

Why INVALID_ARGUMENT and not INTERNAL (grpc-go's and grpc-java's choice for an
undecodable message): the fault is the caller's, and INTERNAL reads as the
sidecar's own bug on every dashboard that alerts on server errors.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from sidecar.errors import InvalidRequest
from sidecar.rpc._ending import refuse

__all__ = ["DecodeGuard"]

_Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]
_Context = grpc.aio.ServicerContext[Any, Any]
# Bound the decoder's message in the status: it may quote the caller's bytes.
_MAX_DETAIL: Final = 200


class _Undecodable:
    """Stands in for a request that did not decode."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidRequest) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RecursionError) as exc:
            detail = str(exc)[:_MAX_DETAIL]
            return _Undecodable(InvalidRequest("request", f"could not be decoded: {detail}"))

    return deserialize


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Turns undecodable requests into INVALID_ARGUMENT before any handler sees them."""

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        streams_in, streams_out = handler.request_streaming, handler.response_streaming
        behavior: Any = (
            (handler.stream_stream if streams_in else handler.unary_stream)
            if streams_out
            else (handler.stream_unary if streams_in else handler.unary_unary)
        )
        wrapped = _guarded(behavior, streams_in, handler_call_details.method or "")
        make = _HANDLER_FACTORIES[(streams_in, streams_out)]
        guarded: grpc.RpcMethodHandler[Any, Any] = make(
            wrapped, _tolerant(handler.request_deserializer), handler.response_serializer
        )
        return guarded


def _guarded(behavior: Any, streams_in: bool, method: str) -> Any:
    """``behavior`` that never sees an undecodable request, of the same kind (coroutine or not)."""

    def arguments(request: Any) -> Any:
        if streams_in:
            return _checked(request)
        if isinstance(request, _Undecodable):
            raise request.error
        return request

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: _Context) -> AsyncIterator[Any]:
            started_at = time.monotonic()
            try:
                async for response in behavior(arguments(request), context):
                    yield response
            except InvalidRequest as exc:
                await refuse(context, exc, method, started_at)

        return stream

    async def unary(request: Any, context: _Context) -> Any:
        started_at = time.monotonic()
        try:
            return await behavior(arguments(request), context)
        except InvalidRequest as exc:
            await refuse(context, exc, method, started_at)

    return unary


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error
        yield request


_HANDLER_FACTORIES: Final[dict[tuple[bool, bool], Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}

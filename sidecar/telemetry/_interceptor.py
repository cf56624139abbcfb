"""A grpc.aio server interceptor: one SERVER span and one duration measurement per call.

Why ours and not opentelemetry-instrumentation-grpc's aio interceptor: that
one records the deprecated ``rpc.grpc.status_code``/``net.peer.*`` names,
does not see a status set through ``abort_with_status`` (ours always is, to
carry rich error details), and wraps every servicer context in a wrapt proxy.
This one is small, follows the current RPC conventions, and reads the final
status from the context after the handler ends.

The caller's trace context (W3C ``traceparent``/``tracestate`` by default)
is extracted from the call's metadata into a fresh context, so a call without
one starts a new trace and never inherits whatever span the server's own
task happened to carry. The span is current for the whole handler, which is
how the borrow/synthesis/return spans below it find their parent.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from sidecar.telemetry import _names as n
from sidecar.telemetry._instruments import Instruments

__all__ = ["TelemetryInterceptor"]

_Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]
_Context = grpc.aio.ServicerContext[Any, Any]

# Server-side codes that mean the server failed (OTel RPC conventions for gRPC);
# the others are the caller's business and leave the span status unset.
_SERVER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Opens a SERVER span for each call of ``services`` (full names, e.g. ``pkg.Service``)."""

    def __init__(self, instruments: Instruments, services: frozenset[str]) -> None:
        self._t = instruments
        self._services = services

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = (handler_call_details.method or "").lstrip("/")
        if handler is None or method.rsplit("/", 1)[0] not in self._services:
            return handler
        call = _Call(self._t, method, handler_call_details.invocation_metadata or ())
        streams_in, streams_out = handler.request_streaming, handler.response_streaming
        # The stubs type handlers as synchronous; grpc.aio's are coroutines or async generators.
        behavior: Any = (
            (handler.stream_stream if streams_in else handler.unary_stream)
            if streams_out
            else (handler.stream_unary if streams_in else handler.unary_unary)
        )
        wrapped: Any
        if inspect.isasyncgenfunction(behavior):

            async def wrapped(request: Any, context: _Context) -> AsyncIterator[Any]:
                with call.scope(context):
                    async for response in behavior(request, context):
                        yield response

        else:
            # A unary response, or a stream written with context.write().
            async def wrapped(request: Any, context: _Context) -> Any:
                with call.scope(context):
                    return await behavior(request, context)

        make = _HANDLER_FACTORIES[(streams_in, streams_out)]
        rewrapped: grpc.RpcMethodHandler[Any, Any] = make(
            wrapped, handler.request_deserializer, handler.response_serializer
        )
        return rewrapped


_HANDLER_FACTORIES: Final[dict[tuple[bool, bool], Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class _Call:
    """One intercepted call: its span, made current while the handler runs."""

    def __init__(self, instruments: Instruments, method: str, metadata: Any) -> None:
        self._t = instruments
        self._method = method
        self._metadata = metadata

    def scope(self, context: _Context) -> _Scope:
        return _Scope(self, context)


class _Scope:
    def __init__(self, call: _Call, context: _Context) -> None:
        self._call = call
        self._context = context
        self._started = 0.0
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: object = None

    def __enter__(self) -> None:
        t = self._call._t
        self._started = time.monotonic()
        if not t.tracing:
            return
        carrier = {
            key: value
            for key, value in self._call._metadata
            if isinstance(value, str) and not key.endswith("-bin")
        }
        parent = t.propagator.extract(carrier, context=otel_context.Context())
        attributes: dict[str, str | int] = {
            n.RPC_SYSTEM_NAME: "grpc",
            n.RPC_METHOD: self._call._method,
        }
        attributes.update(_peer(self._context.peer()))
        self._span = t.tracer.start_span(
            self._call._method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        t = self._call._t
        code = _final_code(self._context, exc)
        if t.metering:
            t.rpc_duration.record(
                time.monotonic() - self._started,
                {
                    n.RPC_SYSTEM_NAME: "grpc",
                    n.RPC_METHOD: self._call._method,
                    n.RPC_RESPONSE_STATUS_CODE: code.name,
                },
            )
        if not t.tracing:
            return
        span = self._span
        span.set_attribute(n.RPC_RESPONSE_STATUS_CODE, code.name)
        if code is not grpc.StatusCode.OK:
            span.set_attribute(n.ERROR_TYPE, code.name)
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, self._context.details() or code.name))
        if exc is not None and not isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError):
            span.record_exception(exc)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        span.end()


def _final_code(context: _Context, exc: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with, as far as the server can tell."""
    if isinstance(exc, asyncio.CancelledError):
        # The caller cancelled, or its deadline passed (gRPC cancels the handler).
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN  # grpc turns an unhandled exception into UNKNOWN
    return grpc.StatusCode.OK


def _peer(peer: str) -> dict[str, str | int]:
    """``network.peer.*`` from grpc's ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5`` or ``unix:...``."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        if port.isdigit():
            return {n.NETWORK_PEER_ADDRESS: host.strip("[]"), n.NETWORK_PEER_PORT: int(port)}
    elif kind == "unix":
        return {n.NETWORK_PEER_ADDRESS: rest}
    return {}

"""The :class:`Telemetry` object: one tracer, one meter, every instrument, created once.

The server assembly builds one :class:`Telemetry` and hands it to the pool,
the servicer and each session through their constructors; nothing reaches
for a global provider. Without providers it is a no-op whose scopes are
shared, do-nothing singletons, so code and tests that never enable telemetry
pay one attribute check per call.

Span tree of one call (the RPC span comes from the server interceptor)::

    cosyvoice.sidecar.v1.Synthesizer/StreamingSynthesize   SERVER
    ├── borrow           wait, warm or opened, pool counts at borrow
    │   └── connect      only when the call had to open a connection
    ├── synthesis        DashScope task: id, model, voice, first audio, bytes, outcome
    └── return           returned to the pool or discarded, and why

Connections the pool opens or renews in the background get root ``connect``
spans of their own, *linked* to the call that triggered them (if any), never
parented to it: their lifetime has nothing to do with that call's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, SpanKind

from sidecar import __version__
from sidecar.telemetry import _names as n
from sidecar.telemetry._scopes import Borrow, Connect, Return, return_reason
from sidecar.telemetry._synthesis import Synthesis

if TYPE_CHECKING:
    import grpc

__all__ = ["PoolCounts", "Telemetry"]

log = logging.getLogger(__name__)


class PoolCounts(Protocol):
    """What the pool's ``status()`` answers (``sidecar.pool.PoolStatus`` fits)."""

    @property
    def idle(self) -> int: ...
    @property
    def busy(self) -> int: ...
    @property
    def opening(self) -> int: ...
    @property
    def closing(self) -> int: ...
    @property
    def waiters(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def min_idle(self) -> int: ...
    @property
    def ready(self) -> bool: ...
    @property
    def breaker_open(self) -> bool: ...
    @property
    def opened_total(self) -> int: ...
    @property
    def closed_total(self) -> Mapping[str, int]: ...
    @property
    def stale_retries(self) -> int: ...


class Telemetry:
    """Tracing and metrics for one sidecar; a no-op when built without providers.

    ``tracer_provider`` / ``meter_provider`` are OpenTelemetry providers (the
    SDK's, or any other implementation); ``propagator`` reads the caller's
    trace context from gRPC metadata (default: the global one, W3C
    ``traceparent``/``tracestate`` unless ``OTEL_PROPAGATORS`` says
    otherwise); ``on_shutdown`` callables flush and stop what this object
    owns (exporters built by :func:`~sidecar.telemetry.telemetry_from_env`).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
        on_shutdown: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.tracing = tracer_provider is not None
        self.metering = meter_provider is not None
        self.enabled = self.tracing or self.metering
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(
            n.SCOPE, __version__
        )
        self.propagator = propagator or get_global_textmap()
        self._on_shutdown = list(on_shutdown)
        self._pools: list[Callable[[], PoolCounts]] = []
        meter = (meter_provider or metrics.NoOpMeterProvider()).get_meter(n.SCOPE, __version__)
        self._create_instruments(meter)

    def __repr__(self) -> str:
        on = {True: "on", False: "off"}
        return f"<Telemetry tracing={on[self.tracing]} metrics={on[self.metering]}>"

    @classmethod
    def disabled(cls) -> Telemetry:
        """Return the shared no-op instance (no spans, no measurements)."""
        return _DISABLED

    def _create_instruments(self, meter: metrics.Meter) -> None:
        buckets = n.LATENCY_BUCKETS_S

        def histogram(name: str, description: str) -> metrics.Histogram:
            return meter.create_histogram(
                name, "s", description, explicit_bucket_boundaries_advisory=buckets
            )

        self.rpc_duration = histogram(
            n.RPC_SERVER_CALL_DURATION, "Duration of incoming Synthesizer calls."
        )
        self.time_to_first_audio = histogram(
            n.METRIC_TIME_TO_FIRST_AUDIO,
            "From the call's arrival to the first audio chunk received from DashScope.",
        )
        self.synthesis_duration = histogram(
            n.METRIC_SYNTHESIS_DURATION, "From run-task to the end of the DashScope task."
        )
        self.wait_time = histogram(
            n.METRIC_WAIT_TIME, "Time a call waited for an upstream connection."
        )
        self.use_time = histogram(
            n.METRIC_USE_TIME, "Time between borrowing a connection and returning it."
        )
        self.create_time = histogram(
            n.METRIC_CREATE_TIME, "Time to open one upstream WebSocket (TCP, TLS, upgrade)."
        )
        self.tasks = meter.create_counter(
            n.METRIC_TASKS, "{task}", "DashScope tasks ended, by outcome."
        )
        self.timeouts = meter.create_counter(
            n.METRIC_TIMEOUTS, "{timeout}", "Borrows that gave up: every connection stayed busy."
        )
        # Every counter is exported from the start, at 0 for each value it is
        # known to take: a series that appears only with its first increment
        # makes rate() and absent()-based alerts blind until then. The task
        # outcomes get a series without the model, which only the first call
        # names; sums by outcome are the same.
        for outcome in n.SYNTHESIS_OUTCOMES:
            self.tasks.add(0, {n.SYNTHESIS_OUTCOME: outcome})
        self.timeouts.add(0)
        meter.create_observable_counter(
            n.METRIC_OPENED,
            [self._observe_opened],
            "{connection}",
            "Upstream connections opened.",
        )
        meter.create_observable_counter(
            n.METRIC_CLOSED,
            [self._observe_closed],
            "{connection}",
            "Upstream connections closed, by reason (renewed, failed, stale, shutdown, ...).",
        )
        meter.create_observable_counter(
            n.METRIC_STALE_RETRIES,
            [self._observe_stale_retries],
            "{call}",
            "Calls retried on a fresh connection after a pooled one failed before task-started.",
        )
        meter.create_observable_gauge(
            n.METRIC_READY,
            [self._observe_ready],
            "1",
            "1 while the pool can serve warm (health SERVING), else 0.",
        )
        meter.create_observable_gauge(
            n.METRIC_BREAKER_OPEN,
            [self._observe_breaker],
            "1",
            "1 while the upstream refuses the API key and the pool stopped connecting.",
        )
        meter.create_observable_up_down_counter(
            n.METRIC_CONNECTION_COUNT,
            [self._observe_counts],
            "{connection}",
            "Upstream connections by state (idle, busy, opening, closing).",
        )
        meter.create_observable_up_down_counter(
            n.METRIC_PENDING_REQUESTS,
            [self._observe_waiters],
            "{request}",
            "Calls waiting for a free upstream connection.",
        )
        meter.create_observable_up_down_counter(
            n.METRIC_CONNECTION_MAX,
            [self._observe_max],
            "{connection}",
            "The pool's cap on upstream connections.",
        )
        meter.create_observable_up_down_counter(
            n.METRIC_IDLE_MIN,
            [self._observe_min_idle],
            "{connection}",
            "Warm idle connections the pool keeps.",
        )

    # ------------------------------------------------------------- pool gauges

    def watch_pool(self, status: Callable[[], PoolCounts]) -> None:
        """Report ``status()`` (the pool's counts) through the connection gauges."""
        if self.metering:  # the shared disabled instance must not keep every pool alive
            self._pools.append(status)

    def _statuses(self) -> list[PoolCounts]:
        # Collection runs on the exporter's thread while the event loop mutates
        # the pool; a snapshot that races a mutation is retried once, then skipped.
        out = []
        for status in self._pools:
            for _ in range(2):
                try:
                    out.append(status())
                    break
                except RuntimeError:
                    continue
        return out

    def _observe_counts(self, _: CallbackOptions) -> Iterable[Observation]:
        for s in self._statuses():
            for state, value in (
                ("idle", s.idle),
                ("busy", s.busy),
                ("opening", s.opening),
                ("closing", s.closing),
            ):
                yield Observation(value, {n.CONNECTION_STATE: state})

    def _observe_waiters(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.waiters) for s in self._statuses()]

    def _observe_max(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.max_size) for s in self._statuses()]

    def _observe_min_idle(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.min_idle) for s in self._statuses()]

    def _observe_opened(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.opened_total) for s in self._statuses()]

    def _observe_closed(self, _: CallbackOptions) -> Iterable[Observation]:
        for s in self._statuses():
            # Known reasons at 0 until they happen (see _create_instruments).
            counts = dict.fromkeys(n.CLOSE_REASONS, 0) | dict(s.closed_total)
            for reason, count in sorted(counts.items()):
                yield Observation(count, {n.CLOSE_REASON: reason})

    def _observe_stale_retries(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.stale_retries) for s in self._statuses()]

    def _observe_ready(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(s.ready)) for s in self._statuses()]

    def _observe_breaker(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(s.breaker_open)) for s in self._statuses()]

    # ------------------------------------------------------------------ scopes

    def server_interceptor(self, services: Iterable[str]) -> grpc.aio.ServerInterceptor | None:
        """Return the interceptor that opens a server span per call of ``services``.

        None when tracing and metrics are both off: then nothing is installed.
        """
        if not self.enabled:
            return None
        from sidecar.telemetry._interceptor import TelemetryInterceptor

        return TelemetryInterceptor(self, frozenset(services))

    def tag_call(self, request_id: str) -> None:
        """Put the call's request id on its server span."""
        if self.tracing:
            trace.get_current_span().set_attribute(n.REQUEST_ID, request_id)

    def borrow(self, status: Callable[[], PoolCounts]) -> Borrow:
        """Scope one borrow (``with``); ``status()`` (the pool's counts) is read as it begins."""
        if not self.enabled:
            return _NOOP_BORROW
        return Borrow(self, status)

    def synthesis(
        self,
        *,
        request_id: str,
        model: str,
        voice: str,
        audio_format: str,
        sample_rate: int,
    ) -> Synthesis:
        """Start the synthesis span (ended by :meth:`Synthesis.end`), a child of the current one."""
        if not self.enabled:
            return _NOOP_SYNTHESIS
        span = self.tracer.start_span(
            n.SPAN_SYNTHESIS,
            attributes={
                n.REQUEST_ID: request_id,
                n.MODEL: model,
                n.VOICE: voice,
                n.AUDIO_FORMAT: audio_format,
                n.AUDIO_SAMPLE_RATE: sample_rate,
            },
        )
        return Synthesis(self, span, model=model)

    def returning(
        self,
        connection_id: int,
        *,
        kept: bool,
        cancelled: bool,
        error: BaseException | None,
        held_s: float | None = None,
    ) -> Return:
        """Scope giving a connection back (``with``): kept in the pool or discarded, and why.

        ``kept`` is the connection's reuse flag as it goes back; ``cancelled``
        whether its task was cancelled upstream; ``error`` what ended the
        call early, if anything. The reason recorded is derived from them.
        """
        if not self.enabled:
            return _NOOP_RETURN
        reason = return_reason(kept=kept, cancelled=cancelled, error=error)
        return Return(self, connection_id, kept=kept, reason=reason, held_s=held_s)

    def connecting(self, purpose: str, *, detached: bool, replaces: int | None = None) -> Connect:
        """Scope opening one upstream connection (``with``).

        ``purpose`` says why (caller, warm, renewal, probe, ...); ``replaces``
        is the id of the connection a renewal replaces. ``detached=True`` for
        the pool's background work: the span is a new root, linked to the
        span that was current (the call whose return or borrow triggered it)
        instead of its child.
        """
        if not self.enabled:
            return _NOOP_CONNECT
        span = self._span_for(n.SPAN_CONNECT, detached, purpose)
        if replaces is not None:
            span.set_attribute(n.CONNECTION_REPLACES, replaces)
        return Connect(self, purpose, span)

    def _span_for(self, name: str, detached: bool, purpose: str) -> trace.Span:
        attributes = {n.CONNECT_PURPOSE: purpose}
        if not detached:
            return self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        trigger = trace.get_current_span().get_span_context()
        return self.tracer.start_span(
            name,
            context=otel_context.Context(),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=[Link(trigger)] if trigger.is_valid else None,
        )

    # --------------------------------------------------------------- shutdown

    async def aclose(self) -> None:
        """:meth:`shutdown` in a worker thread: exporting blocks, the event loop must not."""
        if self._on_shutdown:
            await asyncio.to_thread(self.shutdown)

    def shutdown(self) -> None:
        """Flush and stop the exporters this object owns; logs failures, never raises."""
        hooks, self._on_shutdown = self._on_shutdown, []
        for hook in reversed(hooks):
            try:
                hook()
            except Exception:
                log.exception("telemetry shutdown step failed")


_DISABLED = Telemetry()
_NOOP_BORROW = Borrow(_DISABLED, None)
_NOOP_SYNTHESIS = Synthesis(_DISABLED, trace.INVALID_SPAN, model="")
_NOOP_RETURN = Return(_DISABLED, 0, kept=True, reason="", held_s=None)
_NOOP_CONNECT = Connect(_DISABLED, "", trace.INVALID_SPAN)

"""The :class:`Telemetry` object: one tracer, one meter, every instrument, created once.

The server assembly builds one :class:`Telemetry` and hands it to the pool,
the servicer and each call through their constructors; nothing reaches for a
global provider. Its instruments live in ``_instruments``; the scopes it
hands out write through them. Without providers it is a no-op whose scopes are
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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, SpanKind

from sidecar.telemetry import _names as n
from sidecar.telemetry._instruments import Instruments
from sidecar.telemetry._scopes import Borrow, Connect, Return, return_reason
from sidecar.telemetry._synthesis import Synthesis

if TYPE_CHECKING:
    import grpc

    from sidecar.fleet import FleetStatus
    from sidecar.pool import PoolStatus

__all__ = ["Telemetry"]

_Callback = Callable[[CallbackOptions], Iterable[Observation]]

log = logging.getLogger(__name__)


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
        self.instruments = Instruments(tracer_provider, meter_provider, propagator)
        self.tracing = self.instruments.tracing
        self.metering = self.instruments.metering
        self.enabled = self.instruments.enabled
        self._on_shutdown = list(on_shutdown)
        self._pools: list[Callable[[], PoolStatus]] = []
        self._observe_pools(self.instruments.meter)
        self._observe_fleet(self.instruments.meter)

    def __repr__(self) -> str:
        on = {True: "on", False: "off"}
        return f"<Telemetry tracing={on[self.tracing]} metrics={on[self.metering]}>"

    @classmethod
    def disabled(cls) -> Telemetry:
        """Return the shared no-op instance (no spans, no measurements)."""
        return _DISABLED

    def _observe_pools(self, meter: metrics.Meter) -> None:
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
            "Calls retried once, skipping idle connections, after a pooled one failed before "
            "task-started.",
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

    def _observe_fleet(self, meter: metrics.Meter) -> None:
        """The fleet quota's view, from the pools' published snapshots (when it is on)."""

        def gauge(
            pick: Callable[[FleetStatus], int | None],
        ) -> Callable[..., Iterable[Observation]]:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                for s in self._statuses():
                    value = pick(s.fleet) if s.fleet is not None else None
                    if value is not None:
                        yield Observation(value)

            return observe

        meter.create_observable_up_down_counter(
            n.METRIC_FLEET_HELD,
            [gauge(lambda f: f.held)],
            "{slot}",
            "Fleet quota slots this sidecar holds (its running tasks).",
        )
        meter.create_observable_up_down_counter(
            n.METRIC_FLEET_WAITING,
            [gauge(lambda f: f.waiting)],
            "{request}",
            "Calls of this sidecar waiting for a fleet quota slot.",
        )
        meter.create_observable_gauge(
            n.METRIC_FLEET_IN_USE,
            [gauge(lambda f: f.fleet_in_use)],
            "{slot}",
            "Fleet quota slots in use fleet-wide, as of this sidecar's last Redis round trip.",
        )
        meter.create_observable_gauge(
            n.METRIC_FLEET_QUOTA,
            [gauge(lambda f: f.quota)],
            "{slot}",
            "The fleet-wide quota this sidecar enforces (--fleet-quota).",
        )
        meter.create_observable_counter(
            n.METRIC_FLEET_RECLAIMED,
            [gauge(lambda f: f.reclaimed)],
            "{slot}",
            "Fleet slots taken back because their lease ran out (a sidecar died or lost Redis).",
        )
        meter.create_observable_counter(
            n.METRIC_FLEET_REDIS_ERRORS,
            [gauge(lambda f: f.redis_errors)],
            "{error}",
            "Redis errors of the fleet quota.",
        )
        meter.create_observable_gauge(
            n.METRIC_FLEET_ENFORCED,
            [gauge(lambda f: int(f.enforced))],
            "1",
            "1 while the fleet quota is enforced; 0 while Redis is unreachable.",
        )

    # ------------------------------------------------------------- pool gauges

    def watch_pool(self, status: Callable[[], PoolStatus]) -> None:
        """Report ``status()`` through the connection gauges.

        The metrics exporter calls it from its own thread: pass something safe
        to read there, like the pool's published snapshot
        (:attr:`sidecar.pool.Pool.published`).
        """
        if self.metering:  # the shared disabled instance must not keep every pool alive
            self._pools.append(status)

    def _statuses(self) -> list[PoolStatus]:
        return [status() for status in self._pools]

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
            # Known reasons at 0 until they happen, like the counters in Instruments.
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

        return TelemetryInterceptor(self.instruments, frozenset(services))

    def unknown_event(self, name: str) -> None:
        """Count an upstream event of a name the sidecar does not know (it is ignored)."""
        if self.metering:
            self.instruments.unknown_events.add(1, {n.EVENT_NAME: name[:64]})

    def tag_call(self, request_id: str) -> None:
        """Put the call's request id on its server span."""
        if self.tracing:
            trace.get_current_span().set_attribute(n.REQUEST_ID, request_id)

    def borrow(self, status: Callable[[], PoolStatus]) -> Borrow:
        """Scope one borrow (``with``); ``status()`` (the pool's counts) is read as it begins."""
        if not self.enabled:
            return _NOOP_BORROW
        return Borrow(self.instruments, status)

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
        span = self.instruments.tracer.start_span(
            n.SPAN_SYNTHESIS,
            attributes={
                n.REQUEST_ID: request_id,
                n.MODEL: model,
                n.VOICE: voice,
                n.AUDIO_FORMAT: audio_format,
                n.AUDIO_SAMPLE_RATE: sample_rate,
            },
        )
        return Synthesis(self.instruments, span, model=model)

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
        return Return(self.instruments, connection_id, kept=kept, reason=reason, held_s=held_s)

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
        return Connect(self.instruments, purpose, span)

    def _span_for(self, name: str, detached: bool, purpose: str) -> trace.Span:
        attributes = {n.CONNECT_PURPOSE: purpose}
        tracer = self.instruments.tracer
        if not detached:
            return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        trigger = trace.get_current_span().get_span_context()
        return tracer.start_span(
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
_NOOP_BORROW = Borrow(_DISABLED.instruments, None)
_NOOP_SYNTHESIS = Synthesis(_DISABLED.instruments, trace.INVALID_SPAN, model="")
_NOOP_RETURN = Return(_DISABLED.instruments, 0, kept=True, reason="", held_s=None)
_NOOP_CONNECT = Connect(_DISABLED.instruments, "", trace.INVALID_SPAN)

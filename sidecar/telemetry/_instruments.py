"""The tracer and every instrument, created once: what each scope records into.

:class:`Instruments` is the public surface the scopes (``_scopes``,
``_synthesis``, ``_interceptor``) write through; it knows nothing of them, and
:class:`~sidecar.telemetry.Telemetry` builds it and hands it to them, so the
modules depend on each other one way only.
"""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import TextMapPropagator

from sidecar import __version__
from sidecar.telemetry import _names as n

__all__ = ["Instruments"]


class Instruments:
    """Tracer, propagator and the synchronous instruments of one sidecar.

    Without providers every instrument is OpenTelemetry's no-op, and
    :attr:`enabled` is False, which every scope checks first.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracing = tracer_provider is not None
        self.metering = meter_provider is not None
        self.enabled = self.tracing or self.metering
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(
            n.SCOPE, __version__
        )
        self.propagator = propagator or get_global_textmap()
        self.meter = (meter_provider or metrics.NoOpMeterProvider()).get_meter(n.SCOPE, __version__)
        meter = self.meter
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
        self.fleet_wait_time = histogram(
            n.METRIC_FLEET_WAIT_TIME, "Time a call waited for a slot of the fleet quota."
        )
        self.tasks = meter.create_counter(
            n.METRIC_TASKS, "{task}", "DashScope tasks ended, by outcome."
        )
        self.timeouts = meter.create_counter(
            n.METRIC_TIMEOUTS, "{timeout}", "Borrows that gave up: every connection stayed busy."
        )
        self.unknown_events = meter.create_counter(
            n.METRIC_UNKNOWN_EVENTS,
            "{event}",
            "DashScope events of a name the sidecar does not know (ignored).",
        )
        # Every counter is exported from the start, at 0 for each value it is
        # known to take: a series that appears only with its first increment
        # makes rate() and absent()-based alerts blind until then. The task
        # outcomes get a series without the model, which only the first call
        # names; sums by outcome are the same.
        for outcome in n.SYNTHESIS_OUTCOMES:
            self.tasks.add(0, {n.SYNTHESIS_OUTCOME: outcome})
        self.timeouts.add(0)
        self.unknown_events.add(0)
        self._models: set[str] = set()

    def model_label(self, model: str) -> str:
        """The ``dashscope.model`` value of a metric: the model, or ``other`` once
        :data:`~sidecar.telemetry._names.MAX_MODEL_LABELS` distinct models have been seen.

        The model comes from the caller (DashScope refuses an unknown one only after the
        task is counted), so without a bound any caller could add series without end.
        Spans keep the model as it was asked for.
        """
        if model in self._models:
            return model
        if len(self._models) < n.MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return n.OTHER_MODEL

    def __repr__(self) -> str:
        on = {True: "on", False: "off"}
        return f"<Instruments tracing={on[self.tracing]} metrics={on[self.metering]}>"

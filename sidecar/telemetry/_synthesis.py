"""The ``synthesis`` scope a call opens around one DashScope task.

Unlike the pool's scopes (``_scopes``), the synthesis span lasts across the
call's writes to its caller, so it is never made current except around the
short stretches :meth:`Synthesis.activate` wraps. The call ends it with one
:class:`TaskReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace

from sidecar.errors import (
    CallerIdle,
    CallerStalled,
    InvalidRequest,
    PoolClosed,
    TooManyStreams,
    UpstreamTaskFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.telemetry import _names as n
from sidecar.telemetry._instruments import Instruments
from sidecar.telemetry._scopes import error_status

__all__ = ["Synthesis", "TaskReport"]

# Errors that are the caller's doing or an orderly end: recorded, not a span ERROR.
_NOT_FAILURES = (
    asyncio.CancelledError,
    GeneratorExit,
    InvalidRequest,
    CallerIdle,
    CallerStalled,
    TooManyStreams,
    PoolClosed,
)


@dataclass(frozen=True)
class TaskReport:
    """How one task ended and what it delivered.

    ``finished``: task-finished arrived; ``cancelled``: the sidecar stopped the
    task upstream (the caller left, or the call failed on the sidecar's side);
    ``outcome_error``: what ended the call early, if anything.
    """

    finished: bool = False
    cancelled: bool = False
    outcome_error: BaseException | None = None
    billed_characters: int | None = None
    text_characters: int = 0
    first_audio_ms: float | None = None
    audio_bytes: int = 0
    audio_chunks: int = 0
    sentences: int = 0
    request_uuid: str = ""

    @property
    def outcome(self) -> str:
        """finished, failed (task-failed), cancelled (stopped by the sidecar), broken (the
        connection dropped or an upstream bound expired first) or not_started."""
        if isinstance(self.outcome_error, UpstreamTaskFailed):
            return "failed"
        if self.cancelled:
            return "cancelled"
        if self.finished:
            return "finished"
        if isinstance(self.outcome_error, UpstreamUnavailable | UpstreamTimeout):
            return "broken"
        return "not_started"


class Synthesis:
    """The ``synthesis`` span of one DashScope task, and the task measurements."""

    def __init__(self, instruments: Instruments, span: trace.Span, *, model: str) -> None:
        self._t = instruments
        self._span = span
        self._model = model
        self._started = time.monotonic()
        self._ended = False

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make the span current in this block (tasks created inside inherit it)."""
        if not self._t.tracing:
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(self._span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def started(self, *, task_id: str, connection_id: int) -> None:
        """Record which task and connection (a task refused at start has an id too)."""
        if self._t.tracing:
            self._span.set_attributes({n.TASK_ID: task_id, n.CONNECTION_ID: connection_id})

    def end(self, report: TaskReport) -> None:
        """End the span and record the task (once; later calls do nothing)."""
        if not self._t.enabled or self._ended:
            return
        self._ended = True
        outcome = report.outcome
        error = report.outcome_error
        error_code = error.code if isinstance(error, UpstreamTaskFailed) else None
        if self._t.metering:
            model = self._t.model_label(self._model)
            counted = {n.SYNTHESIS_OUTCOME: outcome, n.MODEL: model}
            self._t.tasks.add(1, {**counted, n.ERROR_CODE: error_code} if error_code else counted)
            self._t.synthesis_duration.record(time.monotonic() - self._started, counted)
            if report.first_audio_ms:
                self._t.time_to_first_audio.record(report.first_audio_ms / 1000, {n.MODEL: model})
        if not self._t.tracing:
            return
        span = self._span
        span.set_attributes(
            {
                n.SYNTHESIS_OUTCOME: outcome,
                n.TEXT_CHARACTERS: report.text_characters,
                n.AUDIO_BYTES: report.audio_bytes,
                n.AUDIO_CHUNKS: report.audio_chunks,
                n.SENTENCES: report.sentences,
            }
        )
        if report.billed_characters is not None:
            span.set_attribute(n.BILLED_CHARACTERS, report.billed_characters)
        if report.first_audio_ms:
            span.set_attribute(n.FIRST_AUDIO_MS, report.first_audio_ms)
        if report.request_uuid:
            span.set_attribute(n.REQUEST_UUID, report.request_uuid)
        if error_code:
            span.set_attribute(n.ERROR_CODE, error_code)
        if error is not None:
            error_status(span, error, failed=not isinstance(error, _NOT_FAILURES))
        span.end()

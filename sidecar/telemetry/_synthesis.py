"""The ``synthesis`` scope the session opens around one DashScope task.

Unlike the pool's scopes (``_scopes``), the synthesis span lasts across
``yield``s to the caller, so it is never made current except around the
short stretches :meth:`Synthesis.activate` wraps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace

from sidecar.errors import (
    CallerIdle,
    InvalidRequest,
    PoolClosed,
    TooManyStreams,
    UpstreamTaskFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.telemetry import _names as n
from sidecar.telemetry._scopes import error_status

if TYPE_CHECKING:
    from sidecar.telemetry._core import Telemetry

__all__ = ["Synthesis", "synthesis_outcome"]

# Errors that are the caller's doing or an orderly end: recorded, not a span ERROR.
_NOT_FAILURES = (
    asyncio.CancelledError,
    GeneratorExit,
    InvalidRequest,
    CallerIdle,
    TooManyStreams,
    PoolClosed,
)


class Synthesis:
    """The ``synthesis`` span of one DashScope task, and the task measurements."""

    def __init__(self, telemetry: Telemetry, span: trace.Span, *, model: str) -> None:
        self._t = telemetry
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
        """Record that DashScope answered task-started."""
        if self._t.tracing:
            self._span.set_attributes({n.TASK_ID: task_id, n.CONNECTION_ID: connection_id})

    def end(
        self,
        *,
        finished: bool,
        cancelled: bool,
        error: BaseException | None,
        billed_characters: int | None,
        text_characters: int,
        first_audio_ms: float | None,
        audio_bytes: int,
        audio_chunks: int,
        sentences: int,
    ) -> None:
        """End the span and record the task (once; later calls do nothing).

        ``finished``: task-finished arrived; ``cancelled``: the sidecar
        cancelled the task upstream (the caller left, or the call failed on
        the sidecar's side); ``error``: what ended the call early, if
        anything. The outcome recorded is derived from them (see
        :func:`synthesis_outcome`).
        """
        if not self._t.enabled or self._ended:
            return
        self._ended = True
        outcome = synthesis_outcome(finished=finished, cancelled=cancelled, error=error)
        duration_s = time.monotonic() - self._started
        error_code = error.code if isinstance(error, UpstreamTaskFailed) else None
        counted = {n.SYNTHESIS_OUTCOME: outcome, n.MODEL: self._model}
        if self._t.metering:
            self._t.tasks.add(1, {**counted, n.ERROR_CODE: error_code} if error_code else counted)
            self._t.synthesis_duration.record(duration_s, counted)
            if first_audio_ms:
                self._t.time_to_first_audio.record(first_audio_ms / 1000, {n.MODEL: self._model})
        if not self._t.tracing:
            return
        span = self._span
        span.set_attributes(
            {
                n.SYNTHESIS_OUTCOME: outcome,
                n.TEXT_CHARACTERS: text_characters,
                n.AUDIO_BYTES: audio_bytes,
                n.AUDIO_CHUNKS: audio_chunks,
                n.SENTENCES: sentences,
            }
        )
        if billed_characters is not None:
            span.set_attribute(n.BILLED_CHARACTERS, billed_characters)
        if first_audio_ms:
            span.set_attribute(n.FIRST_AUDIO_MS, first_audio_ms)
        if error_code:
            span.set_attribute(n.ERROR_CODE, error_code)
        if error is not None:
            error_status(span, error, failed=not isinstance(error, _NOT_FAILURES))
        span.end()


def synthesis_outcome(*, finished: bool, cancelled: bool, error: BaseException | None) -> str:
    """Name how a task ended: finished, failed, cancelled, broken or not_started.

    failed: DashScope answered task-failed; cancelled: the sidecar cancelled
    it; broken: the connection dropped or an upstream bound expired first;
    not_started: it ended before task-started for another reason.
    """
    if isinstance(error, UpstreamTaskFailed):
        return "failed"
    if cancelled:
        return "cancelled"
    if finished:
        return "finished"
    if isinstance(error, UpstreamUnavailable | UpstreamTimeout):
        return "broken"
    return "not_started"

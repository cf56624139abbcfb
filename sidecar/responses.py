"""The responses of a call besides audio: ``started``, sentence timings, ``completed``.

The session decides *when* each goes out; this module says *what* it holds,
field by field as the proto documents it. (Audio chunks and flush
acknowledgements are the outbox's, which orders them with the audio.)
"""

from __future__ import annotations

from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb

from sidecar import protocol
from sidecar.params import TaskParams

__all__ = ["SentenceTimings", "completed", "started"]


def started(
    *, request_id: str, task_id: str, params: TaskParams, warm: bool, pool_wait_ms: float
) -> pb.SynthesizeResponse:
    """The first response: the task is running upstream."""
    return pb.SynthesizeResponse(
        started=pb.Started(
            request_id=request_id,
            task_id=task_id,
            format=params.format_enum,  # type: ignore[arg-type]
            sample_rate_hz=params.sample_rate,
            model=params.model,
            voice=params.voice,
            warm_connection=warm,
            pool_wait_ms=pool_wait_ms,
        )
    )


def completed(
    *,
    billed_characters: int,
    first_audio_ms: float,
    audio_duration_ms: float,
    audio_bytes: int,
    audio_chunks: int,
) -> pb.SynthesizeResponse:
    """The last response: the task finished and every audio byte went out."""
    return pb.SynthesizeResponse(
        completed=pb.Completed(
            billed_characters=billed_characters,
            first_audio_ms=first_audio_ms,
            audio_duration_ms=audio_duration_ms,
            audio_bytes=audio_bytes,
            audio_chunks=audio_chunks,
        )
    )


class SentenceTimings:
    """One ``sentence`` response per sentence, at its end, with its word timings.

    A sentence's text may come only with its sentence-begin event, so it is
    kept from the begin until the end.
    """

    def __init__(self) -> None:
        self._text: dict[int, str] = {}
        self.sentences = 0  # sentences ended so far

    def response_for(self, event: protocol.SentenceEvent) -> pb.SynthesizeResponse | None:
        """Return the response a sentence event makes, if any (only sentence-end does)."""
        if event.kind == "sentence-begin":
            self._text[event.index] = event.original_text
            return None
        if event.kind != "sentence-end":
            return None
        self.sentences += 1
        text = event.original_text or self._text.pop(event.index, "")
        words = [
            pb.WordTiming(
                text=w.text,
                begin_index=w.begin_index,
                end_index=w.end_index,
                begin_ms=w.begin_time,
                end_ms=w.end_time,
            )
            for w in event.words
        ]
        return pb.SynthesizeResponse(
            sentence=pb.SentenceTiming(index=event.index, text=text, words=words)
        )

"""What one task sends: its frames, queued, and what they carried, counted.

:class:`TaskOutput` holds the current sentence's audio as one buffer and cuts
the next binary frame from it on demand, each preceded by the sentence's
``sentence-synthesis`` event, whose frame is built once per sentence since it
is the same for every audio frame (§6). Frames wait in a
:class:`~sidecar.emulator.wire.FrameSink` until written; only then does the
task's :class:`~sidecar.emulator.stats.TaskRecord` count them, so the record
never claims a frame that a closed connection refused.

The pacing schedule is absolute: a frame is due at the first frame's time plus
the audio sent before it times the real-time factor, so a late frame does not
delay the ones after it.
"""

from __future__ import annotations

from collections.abc import Hashable

from websockets.asyncio.server import ServerConnection

from sidecar.emulator import audio
from sidecar.emulator.digest import AudioDigest
from sidecar.emulator.stats import StatsBook, TaskRecord
from sidecar.emulator.wire import BINARY, TEXT, FrameSink, Payload, frame_header

__all__ = ["TaskOutput"]


class TaskOutput:
    """One task's outgoing frames, its pacing schedule and its audio counters."""

    def __init__(
        self,
        connection: ServerConnection,
        spec: audio.AudioSpec,
        record: TaskRecord,
        book: StatsBook,
    ) -> None:
        self.sink = FrameSink(connection)
        self._spec = spec
        self._ms_per_byte = 0.0  # the current sentence's: its duration over its bytes
        # The task's first frame starts with the WAV header (§8).
        self._header = audio.wav_header(spec.sample_rate) if spec.format == "wav" else b""
        self._record = record
        self._book = book
        self._digest = AudioDigest()
        if self._header:
            self._digest.append(("wav", spec.sample_rate), self._header)
        self.first_audio_at: float | None = None  # loop time of the first frame
        self.sentences = 0  # sentence-end events queued
        self._audio_bytes = 0  # queued; the record counts them once written
        self._audio_ms = 0.0  # audio queued, the pacing clock
        # The sentence being sent: its audio, the next frame's offset, the
        # frame size, and the frames that precede every audio frame.
        self._view = memoryview(b"")
        self._offset = 0
        self._size = 1
        self._synthesis = b""
        self._binary_header = b""

    # -- the current sentence -------------------------------------------------

    def start_sentence(
        self,
        key: Hashable,
        data: bytes,
        duration_ms: float,
        begin: bytes,
        synthesis: bytes,
        chunk_ms: int,
    ) -> None:
        """Queue sentence-begin; :meth:`queue_due` queues the sentence's frames.

        ``key`` names ``data`` exactly (see :class:`~sidecar.emulator.digest.AudioDigest`);
        ``duration_ms`` is how long ``data`` plays, which paces its frames
        whatever the format's bytes per millisecond.
        """
        spec = self._spec
        self._digest.append(key, data)
        self.sink.text(begin)
        self._ms_per_byte = duration_ms / len(data) if data else 0.0
        self._view = memoryview(data)
        self._offset = 0
        self._size = audio.chunk_size(spec.format, spec.sample_rate, chunk_ms)
        self._synthesis = frame_header(TEXT, len(synthesis)) + synthesis
        self._binary_header = frame_header(BINARY, self._size)

    @property
    def frames_left(self) -> bool:
        """Whether the current sentence has frames not queued yet."""
        return self._offset < len(self._view)

    def due(self, factor: float) -> float:
        """Loop time at which the next frame is due at real-time factor ``factor`` (> 0)."""
        assert self.first_audio_at is not None
        return self.first_audio_at + self._audio_ms * factor / 1000

    def queue_frame(self) -> None:
        """Queue the sentence's next frame: sentence-synthesis, then the audio."""
        start = self._offset
        end = min(start + self._size, len(self._view))
        chunk: Payload = self._view[start:end]
        self._offset = end
        if end - start == self._size and not self._header:
            header = self._binary_header
        else:  # the sentence's last frame, or the task's first with the WAV header
            chunk = self._header + chunk
            self._header = b""
            header = frame_header(BINARY, len(chunk))
        self.sink.add(self._synthesis, header, chunk)
        self._audio_bytes += len(chunk)
        self._audio_ms += (end - start) * self._ms_per_byte

    def queue_due(self, factor: float, now: float, limit: int) -> float | None:
        """Queue every frame due by ``now`` (at most ``limit`` bytes pending).

        Return when the next frame is due, or None when the sentence has no
        frame left. ``factor`` must be > 0.
        """
        assert self.first_audio_at is not None
        origin = self.first_audio_at
        scale = factor / 1000
        view_len = len(self._view)
        sink = self.sink
        while self._offset < view_len:
            due = origin + self._audio_ms * scale
            if due > now or sink.pending_bytes >= limit:
                return due
            self.queue_frame()
        return None

    def end_sentence(self, end: bytes) -> None:
        """Queue sentence-end (counted in the record once written)."""
        self.sink.text(end)
        self.sentences += 1

    # -- writing and counting ---------------------------------------------------

    async def flush(self) -> None:
        """Write what is queued (waiting out flow control), then count it."""
        await self.sink.flush()
        self.publish()

    def write_now(self) -> bool:
        """Write what is queued if no waiting is needed; return False if :meth:`flush` must."""
        ready = self.sink.write_now()
        if not self.sink.pending:
            self.publish()
        return ready

    def publish(self) -> None:
        """Count in the record what was written so far."""
        record = self._record
        if record.audio_bytes != self._audio_bytes or record.sentences != self.sentences:
            record.audio_bytes = self._audio_bytes
            record.sentences = self.sentences
            self._book.changed()

    def sha256(self) -> str:
        """The SHA-256 of the audio the record counts as sent."""
        return self._digest.hexdigest(self._record.audio_bytes)

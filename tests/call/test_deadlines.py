"""The upstream deadlines: which silence is allowed, which is not, and what the error says."""

from __future__ import annotations

import asyncio

from sidecar.call._deadlines import UpstreamDeadlines
from tests.timing import scaled


class _Overdue:
    """Records when the deadlines fired and the error they describe."""

    def __init__(self, **bounds: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.fired: list[tuple[float, str]] = []
        self.deadlines = UpstreamDeadlines(self.loop, on_overdue=self._fire, **bounds)

    def only_firing(self) -> tuple[float, str]:
        """When the deadlines fired and why; it must have happened exactly once."""
        assert len(self.fired) == 1, self.fired
        return self.fired[0]

    def _fire(self) -> None:
        self.fired.append((self.loop.time(), str(self.deadlines.error())))


async def _frames(overdue: _Overdue, every: float, until: float) -> None:
    """Frames every ``every`` seconds until ``until``; they stop once overdue, as the
    session's reader does (the overdue call cancels it)."""
    while overdue.loop.time() < until and not overdue.fired:
        overdue.deadlines.frame_received()
        await asyncio.sleep(every)


async def test_silence_before_any_flush_or_finish_is_allowed() -> None:
    overdue = _Overdue(first_audio_s=0.02, stall_s=0.02, finish_s=0.02)
    overdue.deadlines.frame_received()  # e.g. task-started
    await asyncio.sleep(0.1)
    assert overdue.fired == []


async def test_no_first_audio_after_a_flush_is_overdue() -> None:
    overdue = _Overdue(first_audio_s=0.05, stall_s=10.0, finish_s=10.0)
    start = overdue.loop.time()
    overdue.deadlines.synthesis_requested()
    overdue.deadlines.frame_received()  # a sentence event is not audio
    await asyncio.sleep(scaled(0.3))
    at, message = overdue.only_firing()
    assert at >= start + 0.05
    assert message == "no audio within 0.05s after flush/finish"


async def test_frames_keep_a_finished_task_alive_until_they_stall() -> None:
    # A stall bound far above the 10 ms between frames: a busy machine that
    # delays one frame must not look like a stall.
    overdue = _Overdue(first_audio_s=10.0, stall_s=0.25, finish_s=10.0)
    overdue.deadlines.finish_sent()
    overdue.deadlines.audio_started()
    frames_end = overdue.loop.time() + 0.5
    await _frames(overdue, every=0.01, until=frames_end)
    assert overdue.fired == []  # 50 frames, 10 ms apart: never 250 ms of silence
    await asyncio.sleep(scaled(1.0))
    at, message = overdue.only_firing()
    assert at >= frames_end + 0.24
    assert message == "upstream stalled for 0.25s between frames"


async def test_task_finished_is_due_even_while_frames_keep_coming() -> None:
    overdue = _Overdue(first_audio_s=10.0, stall_s=0.25, finish_s=0.1)
    start = overdue.loop.time()
    overdue.deadlines.finish_sent()
    overdue.deadlines.audio_started()
    await _frames(overdue, every=0.01, until=start + scaled(0.6))
    at, message = overdue.only_firing()
    assert at >= start + 0.1
    assert message == "no task-finished within 0.1s after finish"


async def test_cancelled_deadlines_never_fire() -> None:
    overdue = _Overdue(first_audio_s=0.02, stall_s=0.02, finish_s=0.02)
    overdue.deadlines.finish_sent()
    overdue.deadlines.cancel()
    await asyncio.sleep(0.08)
    assert overdue.fired == []


async def test_the_clock_stays_stopped_while_either_pump_still_waits_on_the_caller() -> None:
    """The feeder (a flush acknowledgement) and the reader (audio) both blocked on the
    caller: the feeder getting through must not restart the upstream's clock while the
    reader still waits, or a finish then blames the upstream for the caller's pause."""
    overdue = _Overdue(first_audio_s=0.05, stall_s=0.05, finish_s=0.05)
    overdue.deadlines.audio_started()
    overdue.deadlines.pause()  # the feeder
    overdue.deadlines.pause()  # the reader
    overdue.deadlines.resume()  # the feeder's put went through
    overdue.deadlines.finish_sent()
    await asyncio.sleep(scaled(0.3))
    assert overdue.fired == []  # the reader still waits: nothing is the upstream's fault
    resumed = overdue.loop.time()
    overdue.deadlines.resume()  # the reader's too
    await asyncio.sleep(scaled(0.3))
    at, _ = overdue.only_firing()
    assert at >= resumed + 0.05

"""A local emulator of the DashScope CosyVoice WebSocket service.

It models the service as ``docs/dashscope-protocol.md`` describes it (§12;
§15 lists its knobs, one per documented variant where the official sources
disagree). It speaks the run-task protocol through the sans-I/O core
(:mod:`sidecar.protocol`) and depends on nothing else of the sidecar. Tests
and demos start it on port 0::

    async with Emulator(EmulatorKnobs(realtime_factor=0)) as emu:
        ...  # point a client at emu.url, read emu.stats, change emu.update_knobs(...)

Modules: ``knobs`` (behaviour, changeable at run time), ``audio`` (deterministic
audio), ``sentences`` (segmentation, word timings), ``params`` (run-task
validation), ``codes`` (error codes and messages), ``bucket`` (the burst
limit), ``task`` (one task's synthesis), ``output`` (a task's frames and counters),
``pacer`` (one clock for every paced frame), ``wire`` (frames written in
bursts), ``digest`` (audio SHA-256 on read), ``session`` (one connection's
state machine), ``stats`` (counters), ``server`` (listener and HTTP control),
``cli``.
"""

from __future__ import annotations

from sidecar.emulator.audio import AudioSpec, task_audio
from sidecar.emulator.knobs import EmulatorKnobs, KnobError
from sidecar.emulator.server import Emulator
from sidecar.emulator.stats import EmulatorStats, TaskRecord

__all__ = [
    "AudioSpec",
    "Emulator",
    "EmulatorKnobs",
    "EmulatorStats",
    "KnobError",
    "TaskRecord",
    "task_audio",
]

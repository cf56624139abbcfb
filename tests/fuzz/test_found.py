"""What the fuzzers found, kept as plain tests: each failed before its fix."""

from __future__ import annotations

import logging

import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from tests.helpers import assert_pool_settles, sha256, task_record
from tests.timing import scaled


async def test_a_held_tail_over_the_message_limit_is_split(
    sidecar: SidecarServer, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Text, then 20,001 punctuation marks, then finish: once INTERNAL (``ValueError``).

    Text with nothing to speak is held until finish; held text over DashScope's
    20,000-character message limit went out as one message, which the protocol
    core refused.
    """
    caplog.set_level(logging.INFO)
    emulator.update_knobs(ms_per_character=0.5)
    tail = ":" * 20_001
    async with AsyncSynthesizerClient(sidecar.address, retry=False) as client:
        result = await client.stream_texts(["Hello there. ", tail], timeout=scaled(10))
    record = task_record(emulator, result.started.task_id)
    assert record.outcome == "finished"
    assert record.characters == len("Hello there. ") + len(tail)  # every character went
    assert sha256(result.audio) == record.audio_sha256
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    await assert_pool_settles(sidecar, emulator)

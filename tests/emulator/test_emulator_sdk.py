"""The official DashScope Python SDK (2.0.2) as the emulator's client: a peer nobody here wrote.

The SDK is synchronous and threaded; each test runs it in a worker thread
(``asyncio.to_thread``) while the emulator serves in the test's event loop.
Every SDK wait is bounded by the SDK's own timeouts and by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import dashscope
import pytest
from dashscope.audio.tts_v2 import (
    AudioFormat,
    ResultCallback,
    SpeechSynthesizer,
    SpeechSynthesizerObjectPool,
)
from dashscope.common.error import RequestFailure

from sidecar.emulator import AudioSpec, Emulator, task_audio
from tests.timing import scaled

T = TypeVar("T")
MODEL = "cosyvoice-v3-flash"
PCM_16K = AudioFormat.PCM_16000HZ_MONO_16BIT
MS_PER_CHAR = 60.0


@pytest.fixture
def sdk(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """Point the SDK's module-level settings at the emulator, restored afterwards."""
    monkeypatch.setattr(dashscope, "base_websocket_api_url", emulator.url)
    monkeypatch.setattr(dashscope, "api_key", "sk-test")
    return emulator


async def in_thread(fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run blocking SDK code in a worker thread, bounded."""
    async with asyncio.timeout(scaled(timeout)):
        return await asyncio.to_thread(fn)


class Collector(ResultCallback):
    """A ResultCallback keeping audio and events; `sentence_ends` counts sentence-end events."""

    def __init__(self) -> None:
        self.audio = bytearray()
        self.events: list[str] = []
        self.sentence_ended = threading.Event()
        self.audio_arrived = threading.Event()

    def on_event(self, message: str) -> None:
        self.events.append(message)
        if '"sentence-end"' in message:
            self.sentence_ended.set()

    def on_data(self, data: bytes) -> None:
        self.audio += data
        self.audio_arrived.set()


async def test_sdk_call_returns_the_expected_audio(sdk: Emulator) -> None:
    """SpeechSynthesizer.call: one task on one connection, the audio byte for byte."""

    def call() -> tuple[bytes, str]:
        synthesizer: Any = SpeechSynthesizer(model=MODEL, voice="longanyang", format=PCM_16K)
        audio = synthesizer.call("Hello world. How are you?", timeout_millis=5000)
        return audio, synthesizer.get_last_request_id()

    audio, task_id = await in_thread(call)
    spec = AudioSpec("pcm", 16000)
    assert audio == task_audio(["Hello world.", "How are you?"], spec, MS_PER_CHAR)
    stats = await sdk.wait_for(lambda s: s.connections_open == 0, scaled(5))
    record = stats.task(task_id)
    assert record is not None
    assert (record.outcome, record.characters, record.sentences) == ("finished", 25, 2)
    assert stats.client_close_codes == {1000: 1}  # the SDK closes after each task


async def test_sdk_default_format_is_mp3_22050(sdk: Emulator) -> None:
    """The SDK's AudioFormat.DEFAULT sends "Default"/0; the emulator answers mp3/22050."""

    def call() -> bytes:
        synthesizer: Any = SpeechSynthesizer(model=MODEL, voice="longanyang")
        audio: bytes = synthesizer.call("Default format.", timeout_millis=5000)
        return audio

    audio = await in_thread(call)
    assert audio == task_audio(["Default format."], AudioSpec("mp3", 22050), MS_PER_CHAR)


async def test_sdk_streaming_call_and_complete(sdk: Emulator) -> None:
    """streaming_call fragments + streaming_complete: sentences cut where the text ends them."""
    collector = Collector()

    def stream() -> None:
        synthesizer: Any = SpeechSynthesizer(
            model=MODEL, voice="longanyang", format=PCM_16K, callback=collector
        )
        synthesizer.streaming_call("Hello wor")
        synthesizer.streaming_call("ld. Bye")
        synthesizer.streaming_complete(complete_timeout_millis=5000)

    await in_thread(stream)
    spec = AudioSpec("pcm", 16000)
    assert bytes(collector.audio) == task_audio(["Hello world.", "Bye"], spec, MS_PER_CHAR)


async def test_sdk_streaming_flush(sdk: Emulator) -> None:
    """streaming_flush makes the buffered tail a sentence before more text arrives."""
    collector = Collector()

    def stream() -> bool:
        synthesizer: Any = SpeechSynthesizer(
            model=MODEL, voice="longanyang", format=PCM_16K, callback=collector
        )
        synthesizer.streaming_call("Part one")
        synthesizer.streaming_flush()
        flushed = collector.sentence_ended.wait(scaled(5))
        synthesizer.streaming_call("Part two.")
        synthesizer.streaming_complete(complete_timeout_millis=5000)
        return flushed

    assert await in_thread(stream)
    spec = AudioSpec("pcm", 16000)
    assert bytes(collector.audio) == task_audio(["Part one", "Part two."], spec, MS_PER_CHAR)


async def test_sdk_streaming_cancel(sdk: Emulator) -> None:
    """streaming_cancel mid-audio: task-finished at once; the SDK got exactly the bytes sent."""
    sdk.update_knobs(realtime_factor=1.0, chunk_ms=50)
    collector = Collector()

    def stream() -> str:
        synthesizer: Any = SpeechSynthesizer(
            model=MODEL, voice="longanyang", format=PCM_16K, callback=collector
        )
        synthesizer.streaming_call("A sentence long enough to last a few seconds of audio.")
        assert collector.audio_arrived.wait(scaled(5))
        synthesizer.streaming_cancel(complete_timeout_millis=5000)
        task_id: str = synthesizer.get_last_request_id()
        return task_id

    task_id = await in_thread(stream)
    stats = await sdk.wait_for(lambda s: s.outcomes["cancelled"] == 1, scaled(5))
    record = stats.task(task_id)
    assert record is not None
    assert record.outcome == "cancelled"
    assert record.audio_bytes == len(collector.audio)
    assert record.audio_bytes < 16000 * 2  # far less than the sentence's ~3.3 s


async def test_sdk_task_failed_raises_request_failure(sdk: Emulator) -> None:
    """A rejected voice: the SDK raises RequestFailure with the code and message."""

    def call() -> Any:
        synthesizer: Any = SpeechSynthesizer(model=MODEL, voice="bad-voice", format=PCM_16K)
        return synthesizer.call("Never spoken.", timeout_millis=5000)

    with pytest.raises(RequestFailure) as info:
        await in_thread(call)
    assert info.value.name == "InvalidParameter"
    assert info.value.message == "[tts:]Engine return error code: 418"


async def test_sdk_bad_key_is_only_a_connect_timeout(sdk: Emulator) -> None:
    """A refused handshake (401) reaches the SDK only as its connect timeout (§10).

    ``call()`` waits a fixed 5 s for the socket; the private connect the SDK's
    own pool uses takes a shorter bound, so the test stays fast.
    """
    sdk.update_knobs(api_keys=frozenset({"sk-the-only-good-key"}))

    def connect() -> None:
        synthesizer: Any = SpeechSynthesizer(model=MODEL, voice="longanyang", format=PCM_16K)
        synthesizer._SpeechSynthesizer__connect(timeout_seconds=scaled(1.0))

    with pytest.raises(TimeoutError, match="could not established"):
        await in_thread(connect)
    stats = sdk.stats
    assert stats.handshakes_rejected == 1
    assert stats.connections_opened == 0


async def test_sdk_object_pool_reuses_one_connection(sdk: Emulator) -> None:
    """SpeechSynthesizerObjectPool(max_size=1): two borrowed tasks run on one socket."""
    borrowed: list[Any] = []

    def use_pool() -> list[bytes]:
        pool: Any = SpeechSynthesizerObjectPool(max_size=1)
        try:
            audios = []
            for text in ("First task.", "Second task."):
                synthesizer: Any = pool.borrow_synthesizer(
                    model=MODEL, voice="longanyang", format=PCM_16K
                )
                borrowed.append(synthesizer)
                audios.append(synthesizer.call(text, timeout_millis=5000))
                pool.return_synthesizer(synthesizer)
            return audios
        finally:
            pool.shutdown()
            for synthesizer in borrowed:  # the pool never closes its sockets itself
                synthesizer.close()

    audios = await in_thread(use_pool)
    spec = AudioSpec("pcm", 16000)
    assert audios == [
        task_audio(["First task."], spec, MS_PER_CHAR),
        task_audio(["Second task."], spec, MS_PER_CHAR),
    ]
    stats = await sdk.wait_for(lambda s: s.connections_open == 0, scaled(5))
    assert stats.connections_opened == 1
    assert len(stats.tasks_on(1)) == 2
    assert stats.tasks_started > stats.connections_opened

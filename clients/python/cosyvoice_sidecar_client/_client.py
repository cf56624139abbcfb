"""The client classes; see the package docstring."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc

from cosyvoice_sidecar_client._retry import channel_options

__all__ = [
    "AsyncSynthesizerClient",
    "StreamStateError",
    "StreamingCall",
    "SynthesisResult",
    "SynthesizerClient",
    "wav_header",
]

Metadata = Sequence[tuple[str, str]]


def _md(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...] | None:
    return tuple(metadata) if metadata else None


def wav_header(sample_rate: int, data_bytes: int) -> bytes:
    """Return a 44-byte RIFF/WAVE header for 16-bit mono PCM of ``data_bytes`` bytes."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        data_bytes,
    )


@dataclass
class SynthesisResult:
    """Everything one call returned, audio concatenated in order."""

    started: pb.Started = field(default_factory=pb.Started)
    completed: pb.Completed = field(default_factory=pb.Completed)
    audio: bytearray = field(default_factory=bytearray)
    sentences: list[pb.SentenceTiming] = field(default_factory=list)
    chunks: int = 0

    def add(self, response: pb.SynthesizeResponse) -> None:
        """Fold one response into the result; raises ValueError on a sequence gap."""
        kind = response.WhichOneof("response")
        if kind == "started":
            self.started = response.started
        elif kind == "audio":
            if response.audio.sequence != self.chunks:
                raise ValueError(
                    f"audio chunk {response.audio.sequence} arrived, expected {self.chunks}"
                )
            self.audio += response.audio.data
            self.chunks += 1
        elif kind == "sentence":
            self.sentences.append(response.sentence)
        elif kind == "completed":
            self.completed = response.completed

    def wav(self) -> bytes:
        """Return the audio as a playable file: a WAV for pcm, the bytes as they are otherwise."""
        if self.started.format == pb.AUDIO_FORMAT_PCM:
            return wav_header(self.started.sample_rate_hz, len(self.audio)) + bytes(self.audio)
        return bytes(self.audio)


def _requests(
    config: pb.SynthesisConfig | None, texts: Iterable[str]
) -> Iterator[pb.StreamingSynthesizeRequest]:
    yield pb.StreamingSynthesizeRequest(config=config or pb.SynthesisConfig())
    for text in texts:
        yield pb.StreamingSynthesizeRequest(text=text)
    yield pb.StreamingSynthesizeRequest(finish=pb.Finish())


class SynthesizerClient:
    """Blocking client; one channel, many calls.

    Its own channel (plaintext to ``target``) retries calls the sidecar refused
    before any audio (see :data:`SERVICE_CONFIG`); ``retry=False`` turns that
    off. A ``channel`` you pass is used as it is.
    """

    def __init__(
        self, target: str, *, channel: grpc.Channel | None = None, retry: bool = True
    ) -> None:
        self._channel = channel or grpc.insecure_channel(
            target, options=channel_options(retry=retry)
        )
        self._stub = pb_grpc.SynthesizerStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def synthesize(
        self,
        text: str,
        config: pb.SynthesisConfig | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> SynthesisResult:
        """Synthesize one text with the ``Synthesize`` RPC and return all of it."""
        request = pb.SynthesizeRequest(text=text, config=config)
        result = SynthesisResult()
        for response in self._stub.Synthesize(request, timeout=timeout, metadata=_md(metadata)):
            result.add(response)
        return result

    def stream(
        self,
        texts: Iterable[str],
        config: pb.SynthesisConfig | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Iterator[pb.SynthesizeResponse]:
        """Stream ``texts`` as fragments over ``StreamingSynthesize``; yield each response."""
        yield from self._stub.StreamingSynthesize(
            _requests(config, texts), timeout=timeout, metadata=_md(metadata)
        )


class StreamStateError(RuntimeError):
    """Raised by a :class:`StreamingCall` send after ``finish()`` or ``cancel()``.

    A mistake of the caller's, detected locally: nothing is sent, and the call
    goes on (after ``finish()`` its audio and ``completed`` still arrive).
    """


class StreamingCall:
    """An open ``StreamingSynthesize`` call: write text, read responses, concurrently.

    Sends (``send_text``, ``flush``, ``finish``) go out one at a time, in
    order. The first of them waits until the sidecar has accepted the call (its
    response headers come with ``started``): DashScope takes no text before its
    task has started anyway, so this costs only the hop from the client back to
    the sidecar (0.1 to 0.3 ms more to the first audio on loopback, measured
    against the emulator). A call the sidecar refuses then raises the sidecar's
    own status (``grpc.aio.AioRpcError``) from the send, and no text is in
    flight when a refusal arrives. That matters with grpcio's asyncio stack,
    which reports a write that races the end of the call as ``INTERNAL:
    Internal error from Core`` in place of the server's status (grpc/grpc#36066).
    """

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[pb.StreamingSynthesizeRequest, pb.SynthesizeResponse],
    ) -> None:
        self._call = call
        self._writing = asyncio.Lock()
        self._closed_by = ""  # "finish" or "cancel" once either was called

    async def send_text(self, text: str) -> None:
        """Send a fragment of text; fragments may split the text anywhere.

        Raises :class:`StreamStateError` after ``finish()`` or ``cancel()``,
        and the call's ``grpc.aio.AioRpcError`` if the call has ended.
        """
        await self._send(pb.StreamingSynthesizeRequest(text=text), "send_text")

    async def flush(self) -> None:
        """Ask for the text so far to be synthesized now; a ``flushed`` response answers it."""
        await self._send(pb.StreamingSynthesizeRequest(flush=pb.Flush()), "flush")

    async def finish(self) -> None:
        """Send ``finish`` and half-close: no more text. The rest of the audio still arrives."""
        await self._send(pb.StreamingSynthesizeRequest(finish=pb.Finish()), "finish", last=True)

    def cancel(self) -> bool:
        """Cancel the call (and its upstream task); later sends raise :class:`StreamStateError`."""
        self._closed_by = self._closed_by or "cancel"
        return self._call.cancel()

    async def _send(
        self, request: pb.StreamingSynthesizeRequest, what: str, *, last: bool = False
    ) -> None:
        if self._closed_by:
            raise StreamStateError(
                f"{what}() after {self._closed_by}(): this stream takes no more requests"
            )
        if last:
            self._closed_by = "finish"  # from now on, even while finish() is still sending
        async with self._writing:
            await self._accepted()
            try:
                await self._call.write(request)
                if last:
                    await self._call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.InternalError):
                # The call ended while this request was on its way: report how.
                raise await self._ended() from None

    async def _accepted(self) -> None:
        """Wait for the response headers; raise the call's status if it ended instead.

        The sidecar's headers always carry ``x-request-id``. Empty ones are a
        refusal's trailers-only response, whose status grpcio may deliver a
        moment after the (empty) headers: wait for it rather than write.
        """
        headers = await self._call.initial_metadata()
        if headers and not self._call.done():
            return
        raise await self._ended()

    async def _ended(self) -> BaseException:
        """Return what a send raises on a call that has ended (waiting for its status)."""
        code = await self._call.code()
        if self._closed_by == "cancel":
            return asyncio.CancelledError()  # as grpcio reports a call cancelled locally
        if code is grpc.StatusCode.OK:
            return StreamStateError("the call has already completed")
        return grpc.aio.AioRpcError(
            code,
            await self._call.initial_metadata(),
            await self._call.trailing_metadata(),
            await self._call.details(),
        )

    def __aiter__(self) -> AsyncIterator[pb.SynthesizeResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[pb.SynthesizeResponse]:
        while True:
            response = await self._call.read()
            if response is grpc.aio.EOF:
                return
            assert isinstance(response, pb.SynthesizeResponse)
            yield response

    async def collect(self) -> SynthesisResult:
        """Read every remaining response into a :class:`SynthesisResult`."""
        result = SynthesisResult()
        async for response in self:
            result.add(response)
        return result


class AsyncSynthesizerClient:
    """asyncio client; one channel, many concurrent calls.

    Retries as :class:`SynthesizerClient` does; ``retry=False`` turns it off.
    """

    def __init__(
        self, target: str, *, channel: grpc.aio.Channel | None = None, retry: bool = True
    ) -> None:
        self._channel = channel or grpc.aio.insecure_channel(
            target, options=channel_options(retry=retry)
        )
        self._stub = pb_grpc.SynthesizerStub(self._channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def synthesize(
        self,
        text: str,
        config: pb.SynthesisConfig | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> SynthesisResult:
        """Synthesize one text with the ``Synthesize`` RPC and return all of it."""
        call = self._stub.Synthesize(
            pb.SynthesizeRequest(text=text, config=config), timeout=timeout, metadata=_md(metadata)
        )
        result = SynthesisResult()
        async for response in call:
            result.add(response)
        return result

    async def open_stream(
        self,
        config: pb.SynthesisConfig | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> StreamingCall:
        """Open ``StreamingSynthesize`` and send the config; then send text and read."""
        call = self._stub.StreamingSynthesize(timeout=timeout, metadata=_md(metadata))
        await call.write(pb.StreamingSynthesizeRequest(config=config or pb.SynthesisConfig()))
        return StreamingCall(call)

    async def stream_texts(
        self,
        texts: Iterable[str],
        config: pb.SynthesisConfig | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> SynthesisResult:
        """Send ``texts`` as fragments while reading the audio; return all of it."""
        stream = await self.open_stream(config, timeout=timeout, metadata=metadata)

        async def write() -> None:
            for text in texts:
                await stream.send_text(text)
            await stream.finish()

        writer = asyncio.create_task(write())
        try:
            result = await stream.collect()
        except BaseException:
            # The call's error says it all; the writer's own (the same status) is dropped.
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            raise
        await writer  # done: the sidecar completes a stream only after its finish
        return result

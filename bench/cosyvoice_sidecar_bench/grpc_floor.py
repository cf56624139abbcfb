"""The gRPC floor: a bare grpc.aio server that streams canned audio, with no pool and no upstream.

``python -m cosyvoice_sidecar_bench.grpc_floor SPEC_JSON`` serves the
sidecar's ``Synthesizer`` service on ``spec["listen"]`` and prints ``serving
on HOST:PORT`` once it listens. Each call gets what a sidecar call on the
emulator gets, built from nothing: ``started``, the emulator's audio frames
(the same size, the first one ``first_audio_ms`` after the input ended, the
next ones paced ``chunk_ms * realtime_factor`` apart), one ``sentence`` and
``completed``, written with ``context.write`` on the server options of the
sidecar (:data:`sidecar.server.SERVER_OPTIONS`).

The bench drives it with the same load generator as the sidecar (mode
``grpc-floor``): what it costs is what the gRPC half of the sidecar's work
costs at the least, as the ``floor`` mode (the sidecar's own upstream client,
no gRPC) is the upstream half. Their sum is the floor of the sidecar's CPU.

The sidecar merges audio frames into one message while the caller holds
plenty of audio (``--audio-batch-ms``, :mod:`sidecar.rpc._writer`), which at
4x real time sends about a quarter of the messages. The floor follows the
same rule (``batch_ms``), so both write as many messages per task; the
report shows each mode's audio chunks per task.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc

from sidecar.server import SERVER_OPTIONS

__all__ = ["FloorSpec", "frame_plan", "main"]

_Context = grpc.aio.ServicerContext[Any, pb.SynthesizeResponse]


@dataclass(frozen=True)
class FloorSpec:
    """What every call of the floor sends; travels as JSON on the command line."""

    listen: str
    first_audio_ms: float  # after the input ended (the emulator's first-packet delay)
    chunk_ms: int
    realtime_factor: float
    sample_rate: int
    audio_bytes: int  # pcm bytes per call, the workload's expected bytes
    text: str  # the sentence's text in the sentence message
    batch_ms: float = 100.0  # the sidecar's --audio-batch-ms default

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> FloorSpec:
        return cls(**json.loads(text))

    @property
    def frame_bytes(self) -> int:
        """Bytes of one full frame: ``chunk_ms`` of 16-bit mono pcm, as the emulator cuts it."""
        return self.sample_rate * self.chunk_ms // 1000 * 2

    def audio_ms(self, nbytes: int) -> float:
        return nbytes / 2 * 1000 / self.sample_rate


def frame_plan(spec: FloorSpec) -> list[tuple[float, int]]:
    """Return ``(due_s, nbytes)`` per frame: seconds after the input ended, and its size."""
    frames = []
    offset = 0
    first_s = spec.first_audio_ms / 1000
    while offset < spec.audio_bytes:
        size = min(spec.frame_bytes, spec.audio_bytes - offset)
        frames.append((first_s + spec.audio_ms(offset) * spec.realtime_factor / 1000, size))
        offset += size
    return frames


class FloorServicer(pb_grpc.SynthesizerServicer):
    """Both RPCs, coroutines that write with ``context.write`` as the sidecar's do."""

    def __init__(self, spec: FloorSpec) -> None:
        self._spec = spec
        self._plan = frame_plan(spec)
        self._zeros = bytes(spec.frame_bytes)

    async def StreamingSynthesize(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.StreamingSynthesizeRequest], context: _Context
    ) -> None:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("request") != "config":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry the config"
            )
        await self._started(context)
        async for request in requests:  # until the half-close (or finish)
            if request.WhichOneof("request") == "finish":
                break
        await self._audio(context)

    async def Synthesize(  # type: ignore[override]
        self, request: pb.SynthesizeRequest, context: _Context
    ) -> None:
        await self._started(context)
        await self._audio(context)

    async def _started(self, context: _Context) -> None:
        request_id = uuid.uuid4().hex  # as long as the sidecar's own ids
        await context.send_initial_metadata((("x-request-id", request_id),))
        await context.write(
            pb.SynthesizeResponse(
                started=pb.Started(
                    request_id=request_id,
                    task_id=str(uuid.uuid4()),
                    format=pb.AUDIO_FORMAT_PCM,
                    sample_rate_hz=self._spec.sample_rate,
                    model="cosyvoice-v3-flash",
                    voice="longanyang",
                    warm_connection=True,
                )
            )
        )

    async def _audio(self, context: _Context) -> None:
        """Write the frames when due, merged as the sidecar's writer merges them."""
        spec, plan = self._spec, self._plan
        loop = asyncio.get_running_loop()
        origin = loop.time()
        sent_bytes = chunks = 0
        first_at: float | None = None
        i = 0
        while i < len(plan):
            await _sleep_until(loop, origin + plan[i][0])
            now = loop.time()
            last = i + 1  # frames [i, last) go out in this message
            while last < len(plan) and origin + plan[last][0] <= now:
                last += 1  # frames that came due meanwhile, as queued frames merge
            played_ms = (now - first_at) * 1000 if first_at is not None else 0.0
            if (
                first_at is not None
                and spec.batch_ms > 0
                and spec.audio_ms(sent_bytes) - played_ms >= 2 * spec.batch_ms
            ):
                # Hold for batch_ms, or until the last frame (the task's end ends a hold).
                hold_until = now + spec.batch_ms / 1000
                while last < len(plan) and origin + plan[last][0] <= hold_until:
                    last += 1
                end = hold_until if last < len(plan) else origin + plan[last - 1][0]
                await _sleep_until(loop, end)
            nbytes = sum(size for _, size in plan[i:last])
            data = self._zeros[:nbytes] if nbytes <= len(self._zeros) else bytes(nbytes)
            before = spec.audio_ms(sent_bytes)
            sent_bytes += nbytes
            await context.write(
                pb.SynthesizeResponse(
                    audio=pb.AudioChunk(
                        data=data,
                        sequence=chunks,
                        duration_ms=spec.audio_ms(sent_bytes) - before,
                    )
                )
            )
            if first_at is None:
                first_at = loop.time()
            chunks += 1
            i = last
        await context.write(
            pb.SynthesizeResponse(sentence=pb.SentenceTiming(index=0, text=spec.text))
        )
        await context.write(
            pb.SynthesizeResponse(
                completed=pb.Completed(
                    billed_characters=len(spec.text),
                    first_audio_ms=spec.first_audio_ms,
                    audio_duration_ms=spec.audio_ms(sent_bytes),
                    audio_bytes=sent_bytes,
                    audio_chunks=chunks,
                    request_uuid=str(uuid.uuid4()),
                )
            )
        )


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _serve(spec: FloorSpec) -> None:
    """Serve until SIGTERM; print the address once listening."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_SynthesizerServicer_to_server(FloorServicer(spec), server)
    host = spec.listen.rpartition(":")[0]
    port = server.add_insecure_port(spec.listen)
    await server.start()
    sys.stdout.write(f"serving on {host}:{port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m cosyvoice_sidecar_bench.grpc_floor SPEC_JSON\n")
        return 2
    asyncio.run(_serve(FloorSpec.from_json(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

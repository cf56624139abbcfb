"""A raw WebSocket peer for the emulator tests: frames in, frames out, nothing hidden."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from sidecar.emulator import Emulator
from sidecar.protocol import ContinueTask, FinishTask, RunTask
from tests.timing import scaled

__all__ = ["KEY", "Peer", "Transcript", "http_get", "run_params"]

KEY = "sk-test"

Frame = dict[str, Any] | bytes


def run_params(**overrides: Any) -> dict[str, Any]:
    """run-task parameters as §4.1 shows them; ``overrides`` replace or add keys."""
    params: dict[str, Any] = {
        "text_type": "PlainText",
        "voice": "longanyang",
        "format": "pcm",
        "sample_rate": 16000,
        "volume": 50,
        "rate": 1.0,
        "pitch": 1.0,
    }
    params.update(overrides)
    return params


@dataclass
class Transcript:
    """Every frame received for one task, in order, up to its final event."""

    frames: list[Frame] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict)]

    @property
    def final(self) -> dict[str, Any]:
        return self.events[-1]

    @property
    def final_event(self) -> str:
        return str(self.final["header"]["event"])

    @property
    def audio(self) -> bytes:
        return b"".join(f for f in self.frames if isinstance(f, bytes))

    @property
    def binary_frames(self) -> list[bytes]:
        return [f for f in self.frames if isinstance(f, bytes)]

    def shape(self) -> list[str]:
        """Frames as short names: ``begin``, ``synthesis``, ``audio``, ``end``, or the event."""
        names = []
        for f in self.frames:
            if isinstance(f, bytes):
                names.append("audio")
            elif f["header"]["event"] == "result-generated":
                names.append(f["payload"]["output"]["type"].removeprefix("sentence-"))
            else:
                names.append(f["header"]["event"])
        return names

    def sentences(self, kind: str = "sentence-end") -> list[dict[str, Any]]:
        return [
            e["payload"]
            for e in self.events
            if e["header"]["event"] == "result-generated" and e["payload"]["output"]["type"] == kind
        ]


class Peer:
    """One client connection to the emulator, speaking §4 by hand."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, emulator: Emulator, key: str | None = KEY, url: str | None = None
    ) -> AsyncIterator[Peer]:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        async with connect(
            url or emulator.url,
            additional_headers=headers,
            open_timeout=scaled(5),
            close_timeout=scaled(2),
        ) as ws:
            yield cls(ws)

    async def send(self, frame: str) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float = 5.0) -> Frame:
        async with asyncio.timeout(scaled(timeout)):
            message = await self.ws.recv()
        return message if isinstance(message, bytes) else json.loads(message)

    async def start(
        self, task_id: str, model: str = "cosyvoice-v3-flash", **params: Any
    ) -> dict[str, Any]:
        """Send run-task; return the answer (task-started or task-failed)."""
        await self.send(RunTask(task_id, model, run_params(**params)).encode())
        answer = await self.recv()
        assert isinstance(answer, dict), "audio before task-started"
        return answer

    async def text(self, task_id: str, text: str) -> None:
        await self.send(ContinueTask(task_id, text).encode())

    async def flush(self, task_id: str) -> None:
        await self.send(ContinueTask(task_id, None).encode())

    async def finish(self, task_id: str, cancel: bool = False) -> None:
        await self.send(FinishTask(task_id, cancel).encode())

    async def until_end(self, task_id: str, timeout: float = 5.0) -> Transcript:
        """Receive frames until task-finished or task-failed for ``task_id``."""
        transcript = Transcript()
        async with asyncio.timeout(scaled(timeout)):
            while True:
                frame = await self.recv(timeout)
                transcript.frames.append(frame)
                if isinstance(frame, dict) and frame["header"]["event"] in (
                    "task-finished",
                    "task-failed",
                ):
                    assert frame["header"]["task_id"] == task_id
                    return transcript

    async def until(self, kind: str, timeout: float = 5.0) -> Transcript:
        """Receive frames until a result-generated of ``kind`` (or a binary frame: "audio")."""
        transcript = Transcript()
        async with asyncio.timeout(scaled(timeout)):
            while True:
                frame = await self.recv(timeout)
                transcript.frames.append(frame)
                if transcript.shape()[-1] == kind:
                    return transcript

    async def synthesize(self, task_id: str, *texts: str, **params: Any) -> Transcript:
        """One whole task: run-task, the texts, finish-task, every frame up to the end."""
        started = await self.start(task_id, **params)
        assert started["header"]["event"] == "task-started", started
        for text in texts:
            await self.text(task_id, text)
        await self.finish(task_id)
        return await self.until_end(task_id)


async def http_get(emulator: Emulator, target: str) -> tuple[int, Any]:
    """GET ``target`` from the emulator's port over plain HTTP/1.1; return (status, JSON body)."""
    async with asyncio.timeout(scaled(5)):
        reader, writer = await asyncio.open_connection(emulator.host, emulator.port)
        try:
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {emulator.host}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)

"""The Python client stands on its own: no sidecar code, and gapless audio enforced."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import SynthesisResult

from sidecar.emulator import Emulator
from sidecar.server import SidecarServer
from tests.helpers import task_record

CLIENTS = Path(__file__).resolve().parent.parent / "clients" / "python"


def test_client_imports_without_the_sidecar() -> None:
    """Importing the client pulls in neither the sidecar package nor websockets."""
    probe = (
        "import sys, cosyvoice_sidecar_client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sidecar', 'websockets')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(CLIENTS)!r}); {probe}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


_SYNC_CALL = """
import hashlib, sys
from cosyvoice_sidecar_client import SynthesisResult, SynthesizerClient
with SynthesizerClient(sys.argv[1]) as client:
    result = SynthesisResult()
    for response in client.stream(["Blocking ", "client, ", "three fragments."], timeout=30):
        result.add(response)
print(result.started.task_id, hashlib.sha256(result.audio).hexdigest(), result.chunks,
      result.completed.audio_chunks)
"""


async def test_sync_client_streams_fragments(sidecar: SidecarServer, emulator: Emulator) -> None:
    """The blocking client's stream() sends fragments and yields every response in order.

    It runs in its own process, as blocking callers do: grpc's sync and asyncio
    stacks in one process can starve each other.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SYNC_CALL,
        sidecar.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    task_id, digest, chunks, completed_chunks = out.decode().split()
    assert digest == task_record(emulator, task_id).audio_sha256
    assert chunks == completed_chunks


def test_result_refuses_a_sequence_gap() -> None:
    """A missing chunk is an error, never silently glued audio."""
    result = SynthesisResult()
    result.add(pb.SynthesizeResponse(audio=pb.AudioChunk(data=b"a", sequence=0)))
    with pytest.raises(ValueError, match="expected 1"):
        result.add(pb.SynthesizeResponse(audio=pb.AudioChunk(data=b"c", sequence=2)))

"""grpcurl against a live sidecar: the exact command lines the README shows.

The commands below are written for a sidecar on its default address; the tests
substitute the address of a sidecar on an ephemeral port and run them
unchanged otherwise, so the README may quote them verbatim.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import subprocess
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.clients.conftest import RunningSidecar
from tests.helpers import require_executable
from tests.timing import scaled

DEFAULT_ADDRESS = "127.0.0.1:50051"

# Quoted verbatim by the README; keep them copy-pasteable.
GRPCURL_LIST = "grpcurl -plaintext 127.0.0.1:50051 list"
GRPCURL_DESCRIBE = "grpcurl -plaintext 127.0.0.1:50051 describe cosyvoice.sidecar.v1.Synthesizer"
GRPCURL_HEALTH = (
    'grpcurl -plaintext -d \'{"service": "cosyvoice.sidecar.v1.Synthesizer"}\' '
    "127.0.0.1:50051 grpc.health.v1.Health/Check"
)
GRPCURL_SYNTHESIZE = (
    'grpcurl -plaintext -d \'{"text": "Hello from grpcurl."}\' '
    "127.0.0.1:50051 cosyvoice.sidecar.v1.Synthesizer/Synthesize"
)
GRPCURL_SYNTHESIZE_CONFIG = (
    'grpcurl -plaintext -d \'{"text": "Hello again.", "config": {"voice": "longanyang", '
    '"format": "AUDIO_FORMAT_MP3", "sample_rate_hz": 24000}}\' '
    "127.0.0.1:50051 cosyvoice.sidecar.v1.Synthesizer/Synthesize"
)
GRPCURL_INVALID = (
    'grpcurl -plaintext -d \'{"text": "Too loud.", "config": {"volume": 101}}\' '
    "127.0.0.1:50051 cosyvoice.sidecar.v1.Synthesizer/Synthesize"
)

# A field's comment, from reflection v1 with the proto's source info.
GRPCURL_DESCRIBE_FIELD = (
    "grpcurl -plaintext 127.0.0.1:50051 describe cosyvoice.sidecar.v1.SynthesisConfig.volume"
)

GRPCURL_COMMANDS = [
    GRPCURL_LIST,
    GRPCURL_DESCRIBE,
    GRPCURL_DESCRIBE_FIELD,
    GRPCURL_HEALTH,
    GRPCURL_SYNTHESIZE,
    GRPCURL_SYNTHESIZE_CONFIG,
    GRPCURL_INVALID,
]


@pytest.fixture(scope="module")
def grpcurl() -> str:
    """The grpcurl binary: the pinned one in .tools/bin (``make tools``), else on PATH."""
    return require_executable("grpcurl")


def run_grpcurl(
    grpcurl: str, command: str, sidecar: RunningSidecar
) -> subprocess.CompletedProcess[str]:
    """Run one of GRPCURL_COMMANDS against ``sidecar`` (bounded)."""
    assert command in GRPCURL_COMMANDS
    argv = shlex.split(command.replace(DEFAULT_ADDRESS, sidecar.address))
    assert argv[0] == "grpcurl"
    return subprocess.run(  # noqa: S603 - the pinned grpcurl, no shell
        [grpcurl, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        check=False,
    )


def json_stream(text: str) -> list[dict[str, Any]]:
    """Parse grpcurl's output: one JSON object per response, one after the other."""
    decoder = json.JSONDecoder()
    messages: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return messages
        message, position = decoder.raw_decode(text, position)
        messages.append(message)


def synthesized(
    grpcurl: str, command: str, sidecar: RunningSidecar
) -> tuple[list[dict[str, Any]], bytes, dict[str, Any]]:
    """Run a Synthesize command; return its responses, the audio and the upstream's record."""
    result = run_grpcurl(grpcurl, command, sidecar)
    assert result.returncode == 0, result.stderr
    responses = json_stream(result.stdout)
    assert len(responses) >= 3, result.stdout
    assert list(responses[0]) == ["started"]
    assert list(responses[-1]) == ["completed"]
    chunks = [r["audio"] for r in responses if "audio" in r]
    # proto3 JSON leaves out zero values: the first chunk's sequence 0 is absent.
    assert [int(c.get("sequence", 0)) for c in chunks] == list(range(len(chunks)))
    audio = b"".join(base64.b64decode(c["data"]) for c in chunks)
    started = responses[0]["started"]
    record = sidecar.task(started["task_id"], until=lambda t: t["outcome"] != "running")
    assert record["outcome"] == "finished"
    assert len(audio) == record["audio_bytes"] > 0
    assert hashlib.sha256(audio).hexdigest() == record["audio_sha256"]
    completed = responses[-1]["completed"]
    # grpcurl prints proto field names; 64-bit integers are JSON strings.
    assert int(completed["audio_bytes"]) == len(audio)
    return responses, audio, record


def test_list_shows_the_service_health_and_reflection(
    grpcurl: str, sidecar_process: RunningSidecar
) -> None:
    """`grpcurl list` sees the Synthesizer, health and reflection through reflection."""
    result = run_grpcurl(grpcurl, GRPCURL_LIST, sidecar_process)
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert "cosyvoice.sidecar.v1.Synthesizer" in services
    assert "grpc.health.v1.Health" in services
    assert any(s.startswith("grpc.reflection.") for s in services), services


def test_describe_shows_both_rpcs(grpcurl: str, sidecar_process: RunningSidecar) -> None:
    """`grpcurl describe` prints the Synthesizer's two streaming RPCs."""
    result = run_grpcurl(grpcurl, GRPCURL_DESCRIBE, sidecar_process)
    assert result.returncode == 0, result.stderr
    assert "cosyvoice.sidecar.v1.Synthesizer is a service:" in result.stdout
    assert (
        "rpc StreamingSynthesize ( stream .cosyvoice.sidecar.v1.StreamingSynthesizeRequest )"
        " returns ( stream .cosyvoice.sidecar.v1.SynthesizeResponse );" in result.stdout
    )
    assert (
        "rpc Synthesize ( .cosyvoice.sidecar.v1.SynthesizeRequest )"
        " returns ( stream .cosyvoice.sidecar.v1.SynthesizeResponse );" in result.stdout
    )


def test_health_check_is_serving(grpcurl: str, sidecar_process: RunningSidecar) -> None:
    """The health check of the Synthesizer service answers SERVING."""
    result = run_grpcurl(grpcurl, GRPCURL_HEALTH, sidecar_process)
    assert result.returncode == 0, result.stderr
    # The sidecar prints 'serving on' only when ready, so health must agree at once.
    assert json.loads(result.stdout) == {"status": "SERVING"}, "health lags 'serving on'"


def test_synthesize_audio_equals_upstream(grpcurl: str, sidecar_process: RunningSidecar) -> None:
    """The base64 audio of `grpcurl ... Synthesize` is byte for byte the upstream's."""
    responses, audio, record = synthesized(grpcurl, GRPCURL_SYNTHESIZE, sidecar_process)
    started = responses[0]["started"]
    assert started["format"] == "AUDIO_FORMAT_PCM"
    assert record["format"] == "pcm"
    rate = started["sample_rate_hz"]
    assert rate == record["sample_rate"] > 0
    duration_ms = responses[-1]["completed"]["audio_duration_ms"]
    assert abs(duration_ms - len(audio) / 2 / rate * 1000) < 1


def test_synthesize_with_config(grpcurl: str, sidecar_process: RunningSidecar) -> None:
    """A config in the -d JSON reaches the upstream, and the mp3 bytes come back intact."""
    responses, _, record = synthesized(grpcurl, GRPCURL_SYNTHESIZE_CONFIG, sidecar_process)
    started = responses[0]["started"]
    assert started["format"] == "AUDIO_FORMAT_MP3"
    assert started["voice"] == "longanyang"
    assert started["sample_rate_hz"] == 24000
    upstream = (record["format"], record["voice"], record["sample_rate"])
    assert upstream == ("mp3", "longanyang", 24000)


def test_invalid_argument_is_shown(grpcurl: str, sidecar_process: RunningSidecar) -> None:
    """A volume of 101 shows `Code: InvalidArgument` and the field name in grpcurl's output."""
    result = run_grpcurl(grpcurl, GRPCURL_INVALID, sidecar_process)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Code: InvalidArgument" in output, output
    assert "config.volume" in output, output


def test_describe_shows_the_protos_comments(grpcurl: str, sidecar_process: RunningSidecar) -> None:
    """`grpcurl describe` of a field prints the proto's comment on it: range, units, default."""
    result = run_grpcurl(grpcurl, GRPCURL_DESCRIBE_FIELD, sidecar_process)
    assert result.returncode == 0, result.stderr
    assert "cosyvoice.sidecar.v1.SynthesisConfig.volume is a field:" in result.stdout
    assert "// Loudness, 0 to 100, linear. Unset: 50." in result.stdout, result.stdout
    assert "optional int32 volume = 5;" in result.stdout


@pytest.mark.parametrize("service", ["grpc.reflection.v1", "grpc.reflection.v1alpha"])
def test_reflection_serves_the_comments(service: str, sidecar_process: RunningSidecar) -> None:
    """Both reflection versions list each other and serve synthesizer.proto with its comments."""
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="cosyvoice.sidecar.v1.SynthesisConfig"
        ),
        reflection_pb2.ServerReflectionRequest(file_by_filename="no/such.proto"),
    ]
    with grpc.insecure_channel(sidecar_process.address) as channel:
        info = channel.stream_stream(
            f"/{service}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed, described, missing = list(info(iter(requests), timeout=scaled(10)))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert "cosyvoice.sidecar.v1.Synthesizer" in names
    files = {
        f.name: f
        for f in map(
            descriptor_pb2.FileDescriptorProto.FromString,
            described.file_descriptor_response.file_descriptor_proto,
        )
    }
    # The file and what it imports, so a client can build every type it names.
    assert set(files) == {"cosyvoice/sidecar/v1/synthesizer.proto", "google/protobuf/struct.proto"}
    comments = [
        location.leading_comments
        for location in files["cosyvoice/sidecar/v1/synthesizer.proto"].source_code_info.location
    ]
    assert " Loudness, 0 to 100, linear. Unset: 50.\n" in comments
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]

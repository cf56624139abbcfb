"""Python client of cosyvoice-sidecar, async and sync.

Importable on its own (it needs only grpcio, protobuf and the generated
``cosyvoice.sidecar.v1`` code next to it)::

    from cosyvoice_sidecar_client import SynthesizerClient

    with SynthesizerClient("127.0.0.1:50051") as client:
        result = client.synthesize("Hello there.")
        open("hello.wav", "wb").write(result.wav())

Errors are ``grpc.RpcError`` (sync) / ``grpc.aio.AioRpcError`` (async) with the
sidecar's status code and message intact. Calls the sidecar refuses before any
audio are retried by gRPC itself, after the delay the sidecar asks for
(:data:`SERVICE_CONFIG`; ``retry=False`` turns it off).
"""

from __future__ import annotations

from cosyvoice_sidecar_client._client import (
    AsyncSynthesizerClient,
    StreamingCall,
    StreamStateError,
    SynthesisResult,
    SynthesizerClient,
    wav_header,
)
from cosyvoice_sidecar_client._retry import SERVICE_CONFIG, channel_options

__all__ = [
    "SERVICE_CONFIG",
    "AsyncSynthesizerClient",
    "StreamStateError",
    "StreamingCall",
    "SynthesisResult",
    "SynthesizerClient",
    "channel_options",
    "wav_header",
]

"""Python client of cosyvoice-sidecar, async and sync.

Importable on its own (it needs only grpcio, protobuf and the generated
``cosyvoice.sidecar.v1`` code next to it)::

    from cosyvoice_sidecar_client import SynthesizerClient

    with SynthesizerClient("127.0.0.1:50051") as client:
        result = client.synthesize("Hello there.")
        open("hello.wav", "wb").write(result.wav())

Errors are ``grpc.RpcError`` (sync) / ``grpc.aio.AioRpcError`` (async) with the
sidecar's status code and message intact.
"""

from __future__ import annotations

from cosyvoice_sidecar_client._client import (
    AsyncSynthesizerClient,
    StreamingCall,
    SynthesisResult,
    SynthesizerClient,
    wav_header,
)

__all__ = [
    "AsyncSynthesizerClient",
    "StreamingCall",
    "SynthesisResult",
    "SynthesizerClient",
    "wav_header",
]

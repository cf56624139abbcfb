"""The default retry policy: a gRPC service config the client's channels carry.

gRPC retries a call by itself (gRFC A6) only while the call is uncommitted:
the sidecar sends no response headers before its first response, so a call it
refuses before any audio (RESOURCE_EXHAUSTED: pool or admission full, DashScope
throttling; UNAVAILABLE: draining, upstream unreachable) can be sent again,
and one that fails after audio has flowed never is. The sidecar's
``grpc-retry-pushback-ms`` trailer tells how long to wait; it replaces the
backoff below. Retry throttling stops retrying altogether while more than
about one call in ten fails, so a saturated sidecar is not hammered.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["SERVICE_CONFIG", "channel_options"]

SERVICE: Final = "cosyvoice.sidecar.v1.Synthesizer"

# The same policy as the Go (cosyvoice.ServiceConfig) and Java
# (SynthesizerClient.defaultServiceConfig) clients.
SERVICE_CONFIG: Final = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    },
    separators=(",", ":"),
)


def channel_options(*, retry: bool = True) -> list[tuple[str, Any]]:
    """Return the channel options of the clients' own channels.

    With ``retry`` the channel carries :data:`SERVICE_CONFIG`; without it
    gRPC's retries are off entirely. Pass them to ``grpc.insecure_channel``
    (or ``grpc.aio.secure_channel`` ...) when you build the channel yourself.
    """
    if retry:
        return [("grpc.service_config", SERVICE_CONFIG)]
    return [("grpc.enable_retries", 0)]

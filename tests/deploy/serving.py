"""A sidecar started the way a deployment starts it: until it says 'serving on', then health.

The deploy tests start it as the image's ENTRYPOINT, inside a container, or with
the manifests' environment; each waits for the one line the sidecar prints when
it accepts calls, and asks the health services what Kubernetes would.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.timing import scaled

__all__ = ["health", "serving_address"]

_SERVING = re.compile(r"serving on (\S+)\n")


async def serving_address(proc: asyncio.subprocess.Process, stderr: Path, within: float) -> str:
    """Read ``proc``'s stdout until 'serving on ADDRESS'; return the address.

    Fails with the tail of ``stderr`` (its log) if the process ends first, and
    after ``within`` seconds (scaled) if it never says it.
    """
    assert proc.stdout is not None
    async with asyncio.timeout(scaled(within)):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                await proc.wait()
                log = (await asyncio.to_thread(stderr.read_text, errors="replace"))[-4000:]
                raise AssertionError(f"exited {proc.returncode} before serving:\n{log}")
            if match := _SERVING.fullmatch(line):
                return match.group(1)


async def health(address: str, service: str) -> int:
    """The status the gRPC health service gives ``service`` (a HealthCheckResponse enum)."""
    async with grpc.aio.insecure_channel(address) as channel:
        # The grpcio-health-checking stubs type HealthStub for sync channels only.
        stub: Any = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=scaled(5))
    return int(reply.status)

"""The read-only ``cosyvoice.sidecar.v1.SidecarStatus`` servicer: the pool as operators see it."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit

import grpc
from cosyvoice.sidecar.v1 import status_pb2 as pb
from cosyvoice.sidecar.v1 import status_pb2_grpc as pb_grpc

from sidecar import __version__
from sidecar.pool import Pool
from sidecar.rpc._synthesizer import SynthesizerServicer

__all__ = ["StatusServicer"]


class StatusServicer(pb_grpc.SidecarStatusServicer):
    """Answers GetStatus from the pool's and the servicer's own counts."""

    def __init__(self, pool: Pool, synthesizer: SynthesizerServicer, upstream_url: str) -> None:
        self._pool = pool
        self._synthesizer = synthesizer
        self._upstream_host = urlsplit(upstream_url).hostname or ""

    async def GetStatus(
        self,
        request: pb.GetStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.GetStatusResponse:
        # The snapshot and the message have the same fields (a test keeps them so).
        pool = pb.PoolStatus(**_present(dataclasses.asdict(self._pool.status())))
        return pb.GetStatusResponse(
            pool=pool,
            active_calls=self._synthesizer.active_calls,
            draining=self._synthesizer.draining,
            upstream_host=self._upstream_host,
            version=__version__,
        )


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that have a value (None means unset), nested dicts too."""
    return {
        k: _present(v) if isinstance(v, dict) and k != "closed_total" else v
        for k, v in fields.items()
        if v is not None
    }

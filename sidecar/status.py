"""The read-only ``cosyvoice.sidecar.v1.SidecarStatus`` servicer: the pool as operators see it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import grpc
from cosyvoice.sidecar.v1 import status_pb2 as pb
from cosyvoice.sidecar.v1 import status_pb2_grpc as pb_grpc

from sidecar import __version__
from sidecar.pool import Pool
from sidecar.servicer import SynthesizerServicer

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
        s = self._pool.status()
        return pb.GetStatusResponse(
            pool=pb.PoolStatus(
                idle=s.idle,
                busy=s.busy,
                opening=s.opening,
                closing=s.closing,
                waiters=s.waiters,
                max_size=s.max_size,
                min_idle=s.min_idle,
                ready=s.ready,
                breaker_open=s.breaker_open,
                last_error=s.last_error,
                opened_total=s.opened_total,
                closed_total=s.closed_total,
                stale_retries=s.stale_retries,
            ),
            active_calls=self._synthesizer.active_calls,
            draining=self._synthesizer.draining,
            upstream_host=self._upstream_host,
            version=__version__,
        )

"""Server assembly: the pool, the servicer, health and reflection on one grpc.aio server.

:class:`SidecarServer` owns the start and the ordered shutdown (STYLE
principle 12): health NOT_SERVING → stop accepting and drain calls within the
grace period → close the pool (code 1000). Failures during shutdown are
logged, not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from sidecar.config import Config
from sidecar.pool import Pool
from sidecar.servicer import SynthesizerServicer
from sidecar.upstream import UpstreamConnection, open_connection

__all__ = ["SERVICE_NAME", "SidecarServer"]

log = logging.getLogger(__name__)

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["Synthesizer"].full_name
# 200,000 characters of 4-byte UTF-8 fit in 1 MiB; larger requests are refused by gRPC.
MAX_RECEIVE_MESSAGE_BYTES: Final = 1 << 20
_HEALTH_POLL_S: Final = 0.1


class SidecarServer:
    """The gRPC server and the pool behind it, started and stopped together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        key = config.api_key.reveal() if config.api_key else ""

        async def connector() -> UpstreamConnection:
            return await open_connection(
                config.upstream_url, key, connect_timeout=config.connect_timeout_s
            )

        self.pool = Pool(
            connector,
            min_idle=config.pool_min_idle,
            max_size=config.pool_max_size,
            acquire_timeout=config.acquire_timeout_s,
        )
        self.health = health_aio.HealthServicer()
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
                # Accept client keepalive pings as often as every 10 s (grpc-go
                # and grpc-java send none by default; 10 s is their usual minimum).
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        pb_grpc.add_SynthesizerServicer_to_server(
            SynthesizerServicer(self.pool, config), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        self._watcher: asyncio.Task[None] | None = None
        self.address = ""

    def __repr__(self) -> str:
        return f"<SidecarServer {self.address or 'unbound'} {self.pool!r}>"

    async def start(self) -> str:
        """Bind, start serving and start warming the pool; return the bound address.

        Health stays NOT_SERVING until the pool has ``min_idle`` warm
        connections, so Kubernetes and load balancers wait for a warm pool.
        """
        await self._set_health(serving=False)
        port = self._server.add_insecure_port(self.config.listen)
        host = self.config.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{port}"
        self.pool.start()
        await self._server.start()
        self._watcher = asyncio.create_task(self._watch_pool(), name="health-watcher")
        log.info(
            "serving on %s, upstream %s, %r", self.address, self.config.upstream_url, self.pool
        )
        return self.address

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the pool to be warm."""
        return await self.pool.wait_ready(timeout)

    async def stop(self, grace: float = 10.0) -> None:
        """Shut down in order; never raises."""
        await self._set_health(serving=False)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        try:
            await self._server.stop(grace)
        except Exception:
            log.exception("stopping the gRPC server failed")
        try:
            await self.pool.aclose()
        except Exception:
            log.exception("closing the pool failed")
        log.info("stopped")

    async def _watch_pool(self) -> None:
        serving = False
        while True:
            if self.pool.ready != serving:
                serving = self.pool.ready
                await self._set_health(serving=serving)
                log.info("health %s: %r", "SERVING" if serving else "NOT_SERVING", self.pool)
            await asyncio.sleep(_HEALTH_POLL_S)

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

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
from cosyvoice.sidecar.v1 import status_pb2, status_pb2_grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from sidecar.auth import BearerTokenInterceptor
from sidecar.config import Config
from sidecar.credentials import ApiKeySource
from sidecar.errors import PoolClosed
from sidecar.pool import Pool, PoolPolicy
from sidecar.reflection import enable_reflection
from sidecar.servicer import SynthesizerServicer
from sidecar.status import StatusServicer
from sidecar.telemetry import Telemetry
from sidecar.upstream import UpstreamConnection, open_connection

__all__ = ["LIVENESS_SERVICE", "SERVICE_NAME", "SidecarServer"]

log = logging.getLogger(__name__)

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["Synthesizer"].full_name
STATUS_SERVICE_NAME: Final = status_pb2.DESCRIPTOR.services_by_name["SidecarStatus"].full_name
# A health service name that is SERVING from start until exit whatever the
# upstream does: a liveness probe on it restarts a hung process, never a pod
# whose only trouble is DashScope (a restart cures no outage or bad key).
LIVENESS_SERVICE: Final = "liveness"
# 200,000 characters of 4-byte UTF-8 fit in 1 MiB; larger requests are refused by gRPC.
MAX_RECEIVE_MESSAGE_BYTES: Final = 1 << 20
_HEALTH_POLL_S: Final = 0.1
SERVER_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
    # Keepalive that never answers a client's pings with GOAWAY too_many_pings:
    # grpc-go and grpc-java send no pings by default, and their keepalive
    # minimums are 10 s; accept pings that often, with or without calls, and
    # never count strikes against a client.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
    # Our own pings find dead callers within ~1.5 min, so their calls end and
    # their upstream connections return to the pool.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)


class SidecarServer:
    """The gRPC server and the pool behind it, started and stopped together."""

    def __init__(self, config: Config, *, telemetry: Telemetry | None = None) -> None:
        self.config = config
        self.telemetry = telemetry or Telemetry.disabled()
        self.api_key = ApiKeySource(config.api_key, config.api_key_file)

        async def connector() -> UpstreamConnection:
            return await open_connection(
                config.upstream_url,
                self.api_key.current(),
                connect_timeout=config.connect_timeout_s,
            )

        self.pool = Pool(
            connector,
            pool_policy(config),
            key_changed=self.api_key.refresh,
            telemetry=self.telemetry,
        )
        self.telemetry.watch_pool(self.pool.status)
        self.health = health_aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        # Outermost, so calls refused by the token check are traced too.
        tracing = self.telemetry.server_interceptor([SERVICE_NAME])
        if tracing is not None:
            interceptors.append(tracing)
        if config.auth_token:
            interceptors.append(BearerTokenInterceptor(config.auth_token))
        self._server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        self.servicer = SynthesizerServicer(self.pool, config, telemetry=self.telemetry)
        pb_grpc.add_SynthesizerServicer_to_server(self.servicer, self._server)
        status_pb2_grpc.add_SidecarStatusServicer_to_server(
            StatusServicer(self.pool, self.servicer, config.upstream_url), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_reflection(
            self._server,
            (
                SERVICE_NAME,
                STATUS_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            ),
        )
        self._watcher: asyncio.Task[None] | None = None
        self._serving = False
        self._draining = False
        self.address = ""

    def __repr__(self) -> str:
        return f"<SidecarServer {self.address or 'unbound'} {self.pool!r}>"

    async def start(self) -> str:
        """Bind, start serving and start warming the pool; return the bound address.

        Health stays NOT_SERVING until the pool has ``min_idle`` warm
        connections, so Kubernetes and load balancers wait for a warm pool.
        """
        await self._set_health(serving=False)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.address = self._bind()
        self.pool.start()
        await self._server.start()
        self._watcher = asyncio.create_task(self._watch_pool(), name="health-watcher")
        log.info(
            "serving on %s, upstream %s, %r", self.address, self.config.upstream_url, self.pool
        )
        return self.address

    def _bind(self) -> str:
        """Listen on ``config.listen`` (host:port, [v6]:port or unix:///path), TLS if configured."""
        listen = self.config.listen
        credentials = _server_credentials(self.config)
        if credentials is None:
            port = self._server.add_insecure_port(listen)
        else:
            port = self._server.add_secure_port(listen, credentials)
        if listen.startswith("unix:"):
            return listen
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        return f"{listen.rsplit(':', 1)[0]}:{port}"

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the pool to be warm; health is SERVING then."""
        ready = await self.pool.wait_ready(timeout)
        await self._sync_health()
        return ready

    async def stop(self, grace: float = 10.0) -> None:
        """Shut down in order; never raises.

        Health NOT_SERVING → refuse new calls → running calls get ``grace``
        seconds to complete → the rest end with UNAVAILABLE and their tasks are
        cancelled upstream → the pool closes every socket with code 1000.
        """
        self._draining = True
        await self._set_health(serving=False)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        # New calls are refused (UNAVAILABLE) from here on while health checks
        # keep answering NOT_SERVING; running calls go on for the grace period.
        self.servicer.start_draining()
        if not await self.servicer.wait_idle(grace):
            log.warning(
                "drain grace of %.1fs expired with %d calls running; ending them",
                grace,
                self.servicer.active_calls,
            )
            self.servicer.abort_all(PoolClosed(f"the sidecar shut down ({grace:g}s drain grace)"))
            await self.servicer.wait_idle(self.config.cancel_timeout_s + 1.0)
        try:
            # Only long-lived health watches remain: end them promptly.
            await self._server.stop(1.0)
        except Exception:
            log.exception("stopping the gRPC server failed")
        try:
            await self.pool.aclose()
        except Exception:
            log.exception("closing the pool failed")
        log.info("stopped")

    async def _watch_pool(self) -> None:
        while True:
            await self._sync_health()
            await asyncio.sleep(_HEALTH_POLL_S)

    async def _sync_health(self) -> None:
        """Make health say what the pool is: SERVING only while warm."""
        if self._draining or self.pool.ready == self._serving:
            return
        self._serving = self.pool.ready
        await self._set_health(serving=self._serving)
        log.info("health %s: %r", "SERVING" if self._serving else "NOT_SERVING", self.pool)

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


def _server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files, or None for plaintext."""
    if not (config.tls_cert and config.tls_key):
        return None
    with open(config.tls_key, "rb") as key, open(config.tls_cert, "rb") as cert:
        pair = (key.read(), cert.read())
    client_ca = None
    if config.tls_client_ca:
        with open(config.tls_client_ca, "rb") as ca:
            client_ca = ca.read()
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def pool_policy(config: Config) -> PoolPolicy:
    """The pool's policy from the configuration."""
    return PoolPolicy(
        min_idle=config.pool_min_idle,
        max_size=config.pool_max_size,
        acquire_timeout=config.acquire_timeout_s,
        max_idle_age=config.pool_max_idle_age_s,
        max_lifetime=config.pool_max_lifetime_s,
        shrink_after=config.pool_shrink_after_s,
        connect_burst=config.pool_connect_burst,
        connect_rate=config.pool_connect_rate,
        auth_probe_interval=config.pool_auth_probe_interval_s,
        lease_stall=config.pool_lease_stall_s,
    )

"""Server assembly: the pool, the servicers, health and reflection on one grpc.aio server.

:class:`SidecarServer` owns the start and the ordered shutdown: health
NOT_SERVING → stop accepting and drain calls within the grace period → close
the pool (code 1000). Failures during shutdown are logged, not raised.

Health has three services, for three readers:

* ``liveness``: SERVING from start to exit, whatever the upstream does (a
  restart cures no DashScope outage, bad key or quota problem);
* ``""``, the pod's readiness: SERVING once the pool has warmed up once, and
  through a later DashScope outage, so one upstream incident does not take
  every replica (and the application's other routes) out of its Service;
  NOT_SERVING while draining. With ``--readiness-follows-upstream`` it
  follows the upstream like the next one;
* ``cosyvoice.sidecar.v1.Synthesizer``: the upstream's health (NOT_SERVING
  while DashScope is unreachable or refuses the key, or while the fleet quota
  fails closed for want of Redis), for callers and dashboards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Final

import grpc
from cosyvoice.sidecar.v1 import status_pb2, status_pb2_grpc
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice.sidecar.v1 import synthesizer_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from sidecar.config import Config
from sidecar.credentials import ApiKeySource
from sidecar.errors import PoolClosed
from sidecar.fleet import FleetQuota, redact_url
from sidecar.pool import Pool
from sidecar.rpc import (
    BearerTokenInterceptor,
    DecodeGuard,
    StatusServicer,
    SynthesizerServicer,
    enable_reflection,
)
from sidecar.telemetry import Telemetry
from sidecar.upstream import UpstreamConnection, open_connection

__all__ = ["LIVENESS_SERVICE", "READINESS_SERVICE", "SERVICE_NAME", "SidecarServer"]

log = logging.getLogger(__name__)

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["Synthesizer"].full_name
STATUS_SERVICE_NAME: Final = status_pb2.DESCRIPTOR.services_by_name["SidecarStatus"].full_name
LIVENESS_SERVICE: Final = "liveness"
READINESS_SERVICE: Final = ""
# After the drain grace, aborted calls get this long to end before the server stops.
_ABORT_GRACE_S: Final = 2.0
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
    # A port another process listens on is refused, not shared: with
    # SO_REUSEPORT (grpc's default) a stale sidecar would silently take half
    # of the calls with its old configuration.
    ("grpc.so_reuseport", 0),
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
                workspace=config.workspace,
            )

        self.fleet = FleetQuota(config.fleet) if config.fleet is not None else None
        self.pool = Pool(
            connector,
            config.pool,
            key_changed=self.api_key.refresh,
            telemetry=self.telemetry,
            fleet=self.fleet,
        )
        # The exporter reads from its own thread: it gets the published snapshot.
        self.telemetry.watch_pool(lambda: self.pool.published)
        self.health = health_aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        # Outermost, so calls refused by the token check are traced too.
        tracing = self.telemetry.server_interceptor([SERVICE_NAME])
        if tracing is not None:
            interceptors.append(tracing)
        if config.auth_token:
            # Before decoding: a caller without the token costs no parsing.
            interceptors.append(BearerTokenInterceptor(config.auth_token))
        interceptors.append(DecodeGuard())
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
        self._health: dict[str, bool] = {}
        self._draining = False
        self._hurry = asyncio.Event()
        self.address = ""

    def __repr__(self) -> str:
        return f"<SidecarServer {self.address or 'unbound'} {self.pool!r}>"

    async def start(self) -> str:
        """Bind, start serving and start warming the pool; return the bound address.

        Readiness stays NOT_SERVING until the pool has ``min_idle`` warm
        connections, so Kubernetes and load balancers wait for a warm pool.
        """
        await self._sync_health()
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.address = self._bind()
        if self.fleet is not None:
            await self.fleet.start()  # never fails for Redis: down is a state, not an error
        self.pool.start()
        await self._server.start()
        self._watcher = asyncio.create_task(self._watch_pool(), name="health-watcher")
        log.info(
            "serving on %s, upstream %s, %r", self.address, self.config.upstream_url, self.pool
        )
        if self.fleet is not None:
            fleet = self.fleet.settings
            log.info(
                "fleet quota %r: %d tasks fleet-wide through %s, %s when Redis is down",
                fleet.key,
                fleet.quota,
                redact_url(fleet.redis_url),
                "local limits only" if fleet.on_redis_down == "open" else "calls fail",
            )
        return self.address

    def _bind(self) -> str:
        """Listen on ``config.listen`` (host:port, [v6]:port or unix:///path), TLS if configured.

        Raises OSError naming the address when it cannot be bound (in use,
        not local, bad path).
        """
        listen = self.config.listen
        credentials = _server_credentials(self.config)
        try:
            if credentials is None:
                port = self._server.add_insecure_port(listen)
            else:
                port = self._server.add_secure_port(listen, credentials)
        except RuntimeError as exc:  # grpc reports a failed bind this way
            port = 0
            cause: Exception | None = exc
        else:
            cause = None
        if port == 0 and not listen.startswith("unix:"):
            raise OSError(
                f"cannot listen on {listen}: the address is in use or not local"
            ) from cause
        if listen.startswith("unix:"):
            if cause is not None:
                raise OSError(f"cannot listen on {listen}: {cause}") from cause
            return listen
        return f"{listen.rsplit(':', 1)[0]}:{port}"

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the pool to be warm; health is SERVING then."""
        ready = await self.pool.wait_ready(timeout)
        await self._sync_health()
        return ready

    def hurry(self) -> None:
        """Cut a running :meth:`stop` short: end the running calls now (a second signal)."""
        self._hurry.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Shut down in order; never raises.

        Health NOT_SERVING → refuse new calls → running calls get ``grace``
        seconds to complete (or until :meth:`hurry`) → the rest end with
        UNAVAILABLE and their tasks are stopped upstream → the pool closes
        every socket with code 1000.
        """
        self._draining = True
        await self._sync_health()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        # New calls are refused (UNAVAILABLE) from here on while health checks
        # keep answering NOT_SERVING; running calls go on for the grace period.
        self.servicer.start_draining()
        if not await self._drained(grace):
            log.warning(
                "%s with %d calls running; ending them",
                "shutdown hurried"
                if self._hurry.is_set()
                else f"drain grace of {grace:g}s expired",
                self.servicer.active_calls,
            )
            self.servicer.abort_all(PoolClosed(f"the sidecar shut down ({grace:g}s drain grace)"))
            await self.servicer.wait_idle(_ABORT_GRACE_S)
        try:
            # Only long-lived health watches remain: end them promptly.
            await self._server.stop(1.0)
        except Exception:
            log.exception("stopping the gRPC server failed")
        try:
            await self.pool.aclose()
        except Exception:
            log.exception("closing the pool failed")
        if self.fleet is not None:
            try:
                await self.fleet.aclose()  # gives back the slots of calls still running
            except Exception:
                log.exception("closing the fleet quota failed")
        log.info("stopped")

    def _fleet_serves(self) -> bool:
        """False only while the fleet quota fails closed for want of Redis."""
        fleet = self.fleet
        if fleet is None or fleet.settings.on_redis_down == "open":
            return True
        return fleet.status().enforced

    async def _drained(self, grace: float) -> bool:
        """Wait for every call to end, at most ``grace`` seconds or until :meth:`hurry`."""
        idle = asyncio.ensure_future(self.servicer.wait_idle(grace))
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({idle, hurry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
        if idle.done():
            return idle.result()
        idle.cancel()
        return False

    async def _watch_pool(self) -> None:
        while True:
            await self._sync_health()
            await asyncio.sleep(_HEALTH_POLL_S)

    async def _sync_health(self) -> None:
        """Make each health service say what it means (module docstring)."""
        upstream = self.pool.ready and not self._draining and self._fleet_serves()
        ready = upstream if self.config.readiness_follows_upstream else self.pool.warmed_once
        wanted = {SERVICE_NAME: upstream, READINESS_SERVICE: ready and not self._draining}
        for name, serving in wanted.items():
            if self._health.get(name) == serving:
                continue
            self._health[name] = serving
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self.health.set(name, status)
            log.info("health %r %s: %r", name, "SERVING" if serving else "NOT_SERVING", self.pool)


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
    # grpc reports unusable PEM files as a failed bind, which would read as "address in
    # use": check them here, where the error can name the file.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except ssl.SSLError as exc:
        raise OSError(
            f"TLS: {config.tls_cert} and {config.tls_key} are not a certificate and its "
            f"private key in PEM ({exc.reason or exc})"
        ) from exc
    if config.tls_client_ca:
        try:
            context.load_verify_locations(config.tls_client_ca)
        except ssl.SSLError as exc:
            raise OSError(
                f"TLS: {config.tls_client_ca} holds no PEM CA certificate ({exc.reason or exc})"
            ) from exc
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )

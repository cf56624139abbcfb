"""The fleet tests' redis-server: the bench's throwaway one, on the tests' time scale."""

from __future__ import annotations

from cosyvoice_sidecar_bench.redis_server import RedisServer as _RedisServer
from cosyvoice_sidecar_bench.redis_server import RedisTls

from tests.timing import scaled

__all__ = ["RedisServer"]


class RedisServer(_RedisServer):
    """A ``redis-server`` on a free loopback port; :meth:`stop` and :meth:`start` keep it."""

    def __init__(
        self, binary: str, *, password: str | None = None, tls: RedisTls | None = None
    ) -> None:
        super().__init__(binary, password=password, tls=tls, timeout_s=scaled(10))

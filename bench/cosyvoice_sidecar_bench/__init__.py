"""The benchmark: the sidecar against the vendor SDK pool and the two floors of its work.

``cosyvoice-sidecar bench`` (or ``python -m cosyvoice_sidecar_bench``) starts the
DashScope emulator as its own process, then runs every mode at every
concurrency level, interleaved and repeated, each client in a fresh process:

* ``cold``: a new WebSocket per request (:func:`sidecar.upstream.open_connection`);
* ``sdk-pool``: the official ``dashscope`` SDK's ``SpeechSynthesizerObjectPool``,
  one thread per worker;
* ``floor``: asyncio on N pre-opened sockets, the same upstream client the
  sidecar uses but no gRPC hop and no process boundary (the upstream floor);
* ``grpc-floor``: a bare grpc.aio server streaming the emulator's frames from
  nothing (no pool, no upstream), driven like the sidecar (the gRPC floor);
* ``sidecar`` / ``sidecar-finish`` / ``sidecar-unary``: the sidecar as its own
  process, driven by a gRPC load generator in another process over
  ``StreamingSynthesize`` (text in fragments, the input ended by a half-close,
  or by the finish message first) and ``Synthesize``: the Go one in
  ``clients/go/cmd/loadgen`` by default, or the Python worker (``--loadgen
  python``); ``sidecar-uvloop`` runs it on uvloop, ``sidecar-b`` with extra
  flags, ``sidecar-fleet`` with the fleet quota on a local ``redis-server``.

``--sequential N`` runs the sequential check (half-close against the finish
message, one call at a time) and ``--fleet N`` the fleet comparison (N
sidecars on one account, with and without the fleet quota) instead.

Modules, leaves first: ``workload`` (what one task sends and must receive),
``stats`` (percentiles), ``procs`` (subprocesses, ``/proc``, the emulator's
HTTP), ``redis_server``, ``worker`` (the client processes), ``grpc_floor``,
``loadgen`` (which load generator drives the gRPC modes; builds the Go one),
``settings``, ``runs`` (one measured run), ``runner`` (the schedule),
``targets`` (the goals' verdicts, per run and per repeat), ``budget`` (where
the CPU went), ``report`` (tables, plot), ``sequential``, ``fleet``, ``cli``.
"""

from __future__ import annotations

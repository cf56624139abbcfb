"""The benchmark: the sidecar against the vendor SDK pool and the physical floor.

``cosyvoice-sidecar bench`` (or ``python -m cosyvoice_sidecar_bench``) starts the
DashScope emulator as its own process, then runs every mode at every
concurrency level, interleaved and repeated, each client in a fresh process:

* ``cold``: a new WebSocket per request (:func:`sidecar.upstream.open_connection`);
* ``sdk-pool``: the official ``dashscope`` SDK's ``SpeechSynthesizerObjectPool``,
  one thread per worker;
* ``floor``: asyncio on N pre-opened sockets, the same upstream client the
  sidecar uses but no gRPC hop and no process boundary;
* ``sidecar`` / ``sidecar-unary``: the sidecar as its own process, driven by a
  gRPC load generator in another process over ``StreamingSynthesize`` (text
  in fragments) and ``Synthesize``: the Go one in ``clients/go/cmd/loadgen``
  by default, or the Python worker (``--loadgen python``); ``sidecar-uvloop``
  runs it on uvloop.

Modules, leaves first: ``workload`` (what one task sends and must receive),
``stats`` (percentiles), ``procs`` (subprocesses, ``/proc``, the emulator's
HTTP), ``worker`` (the client processes), ``loadgen`` (which load generator
drives the sidecar modes; builds the Go one), ``settings``, ``runs`` (one
measured run), ``runner`` (the schedule), ``targets`` (the issue's verdicts,
per run and per repeat), ``budget`` (where the CPU went), ``report`` (table,
plot), ``cli``.
"""

from __future__ import annotations

"""The gRPC edge: where requests become calls and calls become responses and statuses.

Public face: :class:`SynthesizerServicer` (the two RPCs), :class:`StatusServicer`
(``SidecarStatus``), :class:`BearerTokenInterceptor` (optional caller auth),
:class:`DecodeGuard` (undecodable requests answered cleanly) and the error
table (:func:`status_for`, :data:`UPSTREAM_CODES`). Generated protobuf is used
here and above only. Inside: ``_synthesizer`` (the RPCs),
``_config`` (a request's config -> the task's settings), ``_writer`` (the only
place responses are built), ``_statuses`` (the only place errors become
statuses), ``_ending`` (how every call ends, refused by an interceptor or not:
request id, status with its details and trailers, access line),
``_status_service``, ``_auth``, ``_guard``, ``_reflection`` (reflection v1 and
v1alpha, with the proto's comments).
"""

from __future__ import annotations

from sidecar.rpc._auth import BearerTokenInterceptor
from sidecar.rpc._config import resolve
from sidecar.rpc._guard import DecodeGuard
from sidecar.rpc._reflection import enable_reflection
from sidecar.rpc._status_service import StatusServicer
from sidecar.rpc._statuses import (
    SIDECAR_ERRORS,
    UPSTREAM_CODES,
    UpstreamCode,
    status_for,
    upstream_rule,
)
from sidecar.rpc._synthesizer import SynthesizerServicer

__all__ = [
    "SIDECAR_ERRORS",
    "UPSTREAM_CODES",
    "BearerTokenInterceptor",
    "DecodeGuard",
    "StatusServicer",
    "SynthesizerServicer",
    "UpstreamCode",
    "enable_reflection",
    "resolve",
    "status_for",
    "upstream_rule",
]

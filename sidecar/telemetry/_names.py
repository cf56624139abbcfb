"""Span, metric and attribute names: the sidecar's telemetry vocabulary in one place.

``rpc.*``, ``error.type`` and ``network.peer.*`` are OpenTelemetry's
semantic conventions (a test checks them against the installed package); the
rest are ours: ``cosyvoice.*`` for what the
sidecar decides (pool, borrow, return, audio delivered), ``dashscope.*`` for
what the upstream reports (task id, model, voice, billing, error code). No
name here ever carries the API key or the request text (only its length).
``docs/telemetry.md`` lists the same names.
"""

from __future__ import annotations

from typing import Final

# ------------------------------------------- OpenTelemetry semantic conventions
# Spelled out here rather than imported: the RPC names live in the semantic
# conventions package's private ``_incubating`` modules, which may move.
RPC_SYSTEM_NAME: Final = "rpc.system.name"
RPC_METHOD: Final = "rpc.method"
RPC_RESPONSE_STATUS_CODE: Final = "rpc.response.status_code"
RPC_SERVER_CALL_DURATION: Final = "rpc.server.call.duration"
ERROR_TYPE: Final = "error.type"
NETWORK_PEER_ADDRESS: Final = "network.peer.address"
NETWORK_PEER_PORT: Final = "network.peer.port"

# The instrumentation scope of every tracer and meter.
SCOPE: Final = "cosyvoice-sidecar"

# ---------------------------------------------------------------- span names
SPAN_BORROW: Final = "borrow"
SPAN_SYNTHESIS: Final = "synthesis"
SPAN_RETURN: Final = "return"
SPAN_CONNECT: Final = "connect"

# ------------------------------------------------ attributes: the sidecar's own
REQUEST_ID: Final = "cosyvoice.request_id"
CONNECTION_ID: Final = "cosyvoice.connection.id"
# Pool counts at the moment a borrow began.
POOL_IDLE: Final = "cosyvoice.pool.idle"
POOL_BUSY: Final = "cosyvoice.pool.busy"
POOL_OPENING: Final = "cosyvoice.pool.opening"
POOL_WAITERS: Final = "cosyvoice.pool.waiters"
POOL_MAX_SIZE: Final = "cosyvoice.pool.max_size"
# borrow: warm | opened | exhausted | closed | cancelled | error
BORROW_RESULT: Final = "cosyvoice.borrow.result"
BORROW_WAIT_MS: Final = "cosyvoice.borrow.wait_ms"
BORROW_WARM: Final = "cosyvoice.borrow.warm"
BORROW_OPENED: Final = "cosyvoice.borrow.opened_connection"
AUDIO_FORMAT: Final = "cosyvoice.audio.format"
AUDIO_SAMPLE_RATE: Final = "cosyvoice.audio.sample_rate"
AUDIO_BYTES: Final = "cosyvoice.audio.bytes"
AUDIO_CHUNKS: Final = "cosyvoice.audio.chunks"
FIRST_AUDIO_MS: Final = "cosyvoice.first_audio_ms"
SENTENCES: Final = "cosyvoice.sentences"
TEXT_CHARACTERS: Final = "cosyvoice.text.characters"
# synthesis: finished | failed | cancelled | broken | not_started
SYNTHESIS_OUTCOME: Final = "cosyvoice.synthesis.outcome"
SYNTHESIS_OUTCOMES: Final = ("finished", "failed", "cancelled", "broken", "not_started")
# return: returned | discarded, and why
RETURN_RESULT: Final = "cosyvoice.return.result"
RETURN_REASON: Final = "cosyvoice.return.reason"
# connect: caller | warm | replenish | renewal | retry ...
CONNECT_PURPOSE: Final = "cosyvoice.connect.purpose"
CONNECT_MS: Final = "cosyvoice.connect.ms"
# connect: ok | auth_error | unavailable | cancelled | error
CONNECT_RESULT: Final = "cosyvoice.connect.result"
CONNECTION_REPLACES: Final = "cosyvoice.connection.replaces"
# The fleet quota slot a borrow took (when the fleet quota is on).
FLEET_WAIT_MS: Final = "cosyvoice.fleet.wait_ms"
FLEET_ENFORCED: Final = "cosyvoice.fleet.enforced"
CONNECTION_STATE: Final = "cosyvoice.connection.state"
CLOSE_REASON: Final = "cosyvoice.connection.close_reason"
# Why the pool closes a connection (the reasons sidecar.pool gives its closes).
CLOSE_REASONS: Final = ("renewed", "failed", "stale", "shrunk", "reclaimed", "shutdown")
# An upstream event of a name the sidecar does not know.
EVENT_NAME: Final = "dashscope.event"

# ------------------------------------------- attributes: what DashScope reports
TASK_ID: Final = "dashscope.task_id"
MODEL: Final = "dashscope.model"
# Callers name the model, and it labels three metrics: the first this many distinct
# names keep their own series, any further one counts as OTHER_MODEL.
MAX_MODEL_LABELS: Final = 16
OTHER_MODEL: Final = "other"
VOICE: Final = "dashscope.voice"
BILLED_CHARACTERS: Final = "dashscope.billed_characters"
ERROR_CODE: Final = "dashscope.error_code"
REQUEST_UUID: Final = "dashscope.request_uuid"

# ------------------------------------------------------------------- metrics
METRIC_TIME_TO_FIRST_AUDIO: Final = "cosyvoice.synthesis.time_to_first_audio"
METRIC_SYNTHESIS_DURATION: Final = "cosyvoice.synthesis.duration"
METRIC_TASKS: Final = "cosyvoice.synthesis.tasks"
METRIC_WAIT_TIME: Final = "cosyvoice.pool.connection.wait_time"
METRIC_USE_TIME: Final = "cosyvoice.pool.connection.use_time"
METRIC_CREATE_TIME: Final = "cosyvoice.pool.connection.create_time"
METRIC_CONNECTION_COUNT: Final = "cosyvoice.pool.connection.count"
METRIC_PENDING_REQUESTS: Final = "cosyvoice.pool.connection.pending_requests"
METRIC_CONNECTION_MAX: Final = "cosyvoice.pool.connection.max"
METRIC_IDLE_MIN: Final = "cosyvoice.pool.connection.idle.min"
METRIC_TIMEOUTS: Final = "cosyvoice.pool.connection.timeouts"
METRIC_OPENED: Final = "cosyvoice.pool.connection.opened"
METRIC_CLOSED: Final = "cosyvoice.pool.connection.closed"
METRIC_STALE_RETRIES: Final = "cosyvoice.pool.stale_retries"
METRIC_READY: Final = "cosyvoice.pool.ready"
METRIC_BREAKER_OPEN: Final = "cosyvoice.pool.breaker.open"
METRIC_UNKNOWN_EVENTS: Final = "cosyvoice.upstream.unknown_events"
METRIC_FLEET_WAIT_TIME: Final = "cosyvoice.fleet.wait_time"
METRIC_FLEET_HELD: Final = "cosyvoice.fleet.slots.held"
METRIC_FLEET_WAITING: Final = "cosyvoice.fleet.slots.waiting"
METRIC_FLEET_IN_USE: Final = "cosyvoice.fleet.slots.in_use"
METRIC_FLEET_QUOTA: Final = "cosyvoice.fleet.slots.quota"
METRIC_FLEET_RECLAIMED: Final = "cosyvoice.fleet.slots.reclaimed"
METRIC_FLEET_REDIS_ERRORS: Final = "cosyvoice.fleet.redis.errors"
METRIC_FLEET_ENFORCED: Final = "cosyvoice.fleet.enforced"

# Histogram buckets in seconds: a warm borrow takes well under a millisecond,
# a cold connect tens to hundreds, a long synthesis tens of seconds.
LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

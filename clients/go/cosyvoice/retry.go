package cosyvoice

// ServiceConfig is the default gRPC service config of connections that
// [NewClient] (or [DialOptions]) sets up: its retry policy.
//
// gRPC retries a call by itself (gRFC A6) only while it is uncommitted. The
// sidecar sends no response headers before its first response, so a call it
// refuses before any audio can be sent again: RESOURCE_EXHAUSTED (every
// upstream connection busy, too many calls, DashScope throttling) and
// UNAVAILABLE (draining, upstream unreachable). A call that fails after audio
// has flowed is never retried, so no audio is ever played twice. The
// sidecar's grpc-retry-pushback-ms trailer says how long to wait and replaces
// the backoff below; retry throttling stops retrying while more than about one
// call in ten fails, so a saturated sidecar is not hammered.
//
// Turn retries off with grpc.WithDisableRetry(), or replace the policy with a
// later grpc.WithDefaultServiceConfig. The Java and Python clients carry the
// same policy.
const ServiceConfig = `{
  "methodConfig": [{
    "name": [{"service": "cosyvoice.sidecar.v1.Synthesizer"}],
    "retryPolicy": {
      "maxAttempts": 3,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
    }
  }],
  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
}`

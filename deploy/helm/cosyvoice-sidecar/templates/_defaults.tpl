{{/*
The defaults of every setting, in one place. Your chart passes its own values
(typically .Values.cosyvoiceSidecar) to each template below; they are merged
over these, maps key by key, so you set only what you change.
*/}}
{{- define "cosyvoice-sidecar.defaults" -}}
image:
  # Where you pushed the image built from the repository's Dockerfile.
  repository: registry.example.com/cosyvoice-sidecar
  tag: "0.1.0"
  # Unset: Kubernetes' default (IfNotPresent for a tag other than latest).
  pullPolicy: ""
# The Secret holding the DashScope API key (create it yourself; never in values).
apiKeySecret:
  name: dashscope-api-key
  key: api-key
# gRPC port, on every interface: the kubelet's gRPC probes connect to the pod
# IP. Your app calls 127.0.0.1:<port>; expose it through no Service.
port: 50051
# Any COSYVOICE_SIDECAR_* variable (docs/deployment.md, README "Configuration"),
# set as the container's environment.
settings:
  COSYVOICE_SIDECAR_REGION: beijing
  COSYVOICE_SIDECAR_POOL_MIN_IDLE: "2"
  # Per pod: (replicas + maxSurge) x this within your concurrent-task quota.
  COSYVOICE_SIDECAR_POOL_MAX_SIZE: "10"
  # Keep drain grace + ~8 s + your app's shutdown below the pod's
  # terminationGracePeriodSeconds.
  COSYVOICE_SIDECAR_DRAIN_GRACE_S: "10"
  COSYVOICE_SIDECAR_LOG_LEVEL: info
# The fleet quota (docs/fleet-quota.md): the sidecars of every pod that shares
# `key` share one DashScope concurrency quota through Redis. Off unless enabled.
fleet:
  enabled: false
  # The Secret holding the Redis URL (redis://[:password@]host:port/db, or
  # rediss://), created by you; never in values. Mounted as a directory (no
  # subPath), so its other keys are files beside it (a CA for rediss://). The
  # sidecar reads the URL once, at start: restart the pods after changing it.
  redisUrlSecret:
    name: cosyvoice-fleet-redis
    key: redis-url
  # Required when enabled: tasks that may run at once fleet-wide (the account's
  # concurrency quota for the model family, minus what other clients use).
  quota: null
  # Which quota (e.g. account/model family): pods with the same key share it.
  key: default
  # Task starts per second fleet-wide, against Throttling.BurstRate; null: no limit.
  startRate: null
  # How long a dead pod's slots stay taken (renewed every third of it).
  leaseTtlSeconds: 15
  # Redis unreachable: open (serve with local limits only) or closed (calls fail).
  onRedisDown: open
# More env entries, as in a container spec (valueFrom allowed), e.g. OTLP:
# - {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "http://otel-collector:4317"}
extraEnv: []
metrics:
  # The Prometheus endpoint (OTEL_METRICS_EXPORTER=prometheus on 0.0.0.0:port).
  enabled: true
  port: 9464
  # prometheus.io/* pod annotations (one set per pod: turn off if your app
  # uses them for its own metrics, and use the PodMonitor).
  annotations: true
  # A PodMonitor (monitoring.coreos.com/v1): only where its CRD is installed.
  podMonitor:
    enabled: false
    interval: 30s
    labels: {}
  # Who may scrape, for cosyvoice-sidecar.metricsIngressRule.
  scraper:
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: monitoring
    podSelector:
      matchLabels:
        app.kubernetes.io/name: prometheus
# From the benchmark: ~45 MiB idle, 76 MiB at 200 streams; 200 real-time
# streams took 0.44 of a core; one event loop uses at most about one CPU.
resources:
  requests:
    cpu: 100m
    memory: 96Mi
  limits:
    cpu: "1"
    memory: 256Mi
{{- end -}}

{{/* The defaults with .values merged over them, as YAML (internal). */}}
{{- define "cosyvoice-sidecar.values" -}}
{{- $defaults := include "cosyvoice-sidecar.defaults" . | fromYaml -}}
{{- toYaml (mustMergeOverwrite $defaults (deepCopy (.values | default dict))) -}}
{{- end -}}

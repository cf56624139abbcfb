{{/*
The sidecar, as named templates for your chart's pod template. Each takes a
dict: "values" (your settings, merged over _defaults.tpl) and, where a
resource is rendered, "context" (your chart's root context, $).

  spec:
    template:
      metadata:
        labels:
          {{- include "cosyvoice-sidecar.podLabels" (dict "values" .Values.cosyvoiceSidecar) | nindent 10 }}
        {{- with include "cosyvoice-sidecar.podAnnotations" (dict "values" .Values.cosyvoiceSidecar) }}
        annotations:
          {{- . | nindent 10 }}
        {{- end }}
      spec:
        initContainers:
          {{- include "cosyvoice-sidecar.initContainer" (dict "values" .Values.cosyvoiceSidecar) | nindent 10 }}
        volumes:
          {{- include "cosyvoice-sidecar.volumes" (dict "values" .Values.cosyvoiceSidecar) | nindent 10 }}

deploy/kubernetes/components/sidecar renders the same container for
kustomize users; tests/deploy checks that the two agree.
*/}}

{{- define "cosyvoice-sidecar.podLabels" -}}
cosyvoice-sidecar/injected: "true"
{{- end -}}

{{- define "cosyvoice-sidecar.podAnnotations" -}}
{{- $v := include "cosyvoice-sidecar.values" . | fromYaml -}}
{{- if and $v.metrics.enabled $v.metrics.annotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $v.metrics.port | toString | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/*
The native sidecar: an initContainers entry with restartPolicy Always, started
before your containers (they start once its startup probe passes, i.e. once
the pool is warm) and stopped after them (it drains their last calls).
Probes: startup and readiness ask health service "" (SERVING once the pool
has warmed; it stays SERVING through a later DashScope outage, since every
replica shares that upstream; NOT_SERVING while draining), liveness asks
"liveness" (SERVING while the event loop answers, whatever the upstream does).
*/}}
{{- define "cosyvoice-sidecar.initContainer" -}}
{{- $v := include "cosyvoice-sidecar.values" . | fromYaml -}}
- name: cosyvoice-sidecar
  image: {{ printf "%s:%s" $v.image.repository (toString $v.image.tag) | quote }}
  {{- with $v.image.pullPolicy }}
  imagePullPolicy: {{ . }}
  {{- end }}
  restartPolicy: Always
  env:
    - name: COSYVOICE_SIDECAR_LISTEN
      value: {{ printf "0.0.0.0:%v" $v.port | quote }}
    - name: DASHSCOPE_API_KEY_FILE
      value: {{ printf "/var/run/secrets/dashscope/%s" $v.apiKeySecret.key | quote }}
    {{- range $name, $value := $v.settings }}
    - name: {{ $name }}
      value: {{ toString $value | quote }}
    {{- end }}
    {{- if $v.metrics.enabled }}
    - name: OTEL_METRICS_EXPORTER
      value: prometheus
    - name: OTEL_EXPORTER_PROMETHEUS_HOST
      value: "0.0.0.0"
    - name: OTEL_EXPORTER_PROMETHEUS_PORT
      value: {{ $v.metrics.port | toString | quote }}
    {{- end }}
    {{- with $v.fleet }}
    {{- if .enabled }}
    {{- include "cosyvoice-sidecar.fleetEnv" . | nindent 4 }}
    {{- end }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: sidecar-grpc
      containerPort: {{ $v.port }}
      protocol: TCP
    {{- if $v.metrics.enabled }}
    - name: sidecar-metrics
      containerPort: {{ $v.metrics.port }}
      protocol: TCP
    {{- end }}
  startupProbe:
    grpc:
      port: {{ $v.port }}
    periodSeconds: 2
    timeoutSeconds: 2
    failureThreshold: 60
  readinessProbe:
    grpc:
      port: {{ $v.port }}
    periodSeconds: 5
    timeoutSeconds: 2
    failureThreshold: 2
  livenessProbe:
    grpc:
      port: {{ $v.port }}
      service: liveness
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: cosyvoice-sidecar-api-key
      mountPath: /var/run/secrets/dashscope
      readOnly: true
    - name: cosyvoice-sidecar-tmp
      mountPath: /tmp
    {{- if $v.fleet.enabled }}
    - name: cosyvoice-sidecar-fleet-redis
      mountPath: /var/run/secrets/cosyvoice-fleet
      readOnly: true
    {{- end }}
{{- end -}}

{{/*
The fleet quota's settings (internal; takes the merged "fleet" values). The URL
itself is only ever in the Secret: the sidecar gets the name of its file.
*/}}
{{- define "cosyvoice-sidecar.fleetEnv" -}}
{{- $quota := required "cosyvoiceSidecar.fleet.quota is required with fleet.enabled (the fleet's concurrent DashScope tasks)" .quota -}}
{{- if not (has .onRedisDown (list "open" "closed")) -}}
{{- fail "cosyvoiceSidecar.fleet.onRedisDown must be open or closed" -}}
{{- end -}}
- name: COSYVOICE_SIDECAR_FLEET_REDIS_URL_FILE
  value: {{ printf "/var/run/secrets/cosyvoice-fleet/%s" .redisUrlSecret.key | quote }}
- name: COSYVOICE_SIDECAR_FLEET_QUOTA
  value: {{ toString $quota | quote }}
- name: COSYVOICE_SIDECAR_FLEET_KEY
  value: {{ toString .key | quote }}
{{- if not (kindIs "invalid" .startRate) }}
- name: COSYVOICE_SIDECAR_FLEET_START_RATE
  value: {{ toString .startRate | quote }}
{{- end }}
- name: COSYVOICE_SIDECAR_FLEET_LEASE_TTL_S
  value: {{ toString .leaseTtlSeconds | quote }}
- name: COSYVOICE_SIDECAR_FLEET_ON_REDIS_DOWN
  value: {{ .onRedisDown | quote }}
{{- end -}}

{{/*
The key's Secret volume (mounted without subPath, so a rotated key reaches the
running sidecar; mode 0444 because only the sidecar's container mounts it),
a small in-memory /tmp and, with fleet.enabled, the Secret holding the fleet
quota's Redis URL (mounted the same way, but read once at start).
*/}}
{{- define "cosyvoice-sidecar.volumes" -}}
{{- $v := include "cosyvoice-sidecar.values" . | fromYaml -}}
- name: cosyvoice-sidecar-api-key
  secret:
    secretName: {{ $v.apiKeySecret.name }}
    defaultMode: 292
- name: cosyvoice-sidecar-tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- if $v.fleet.enabled }}
- name: cosyvoice-sidecar-fleet-redis
  secret:
    secretName: {{ $v.fleet.redisUrlSecret.name }}
    defaultMode: 292
{{- end }}
{{- end -}}

{{/* A NetworkPolicy ingress rule admitting the scraper to the metrics port. */}}
{{- define "cosyvoice-sidecar.metricsIngressRule" -}}
{{- $v := include "cosyvoice-sidecar.values" . | fromYaml -}}
{{- if $v.metrics.enabled -}}
- from:
    - namespaceSelector:
        {{- toYaml $v.metrics.scraper.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml $v.metrics.scraper.podSelector | nindent 8 }}
  ports:
    - port: {{ $v.metrics.port }}
      protocol: TCP
{{- end }}
{{- end -}}

{{/* A PodMonitor for the sidecars of the pods this release labels (needs its CRD). */}}
{{- define "cosyvoice-sidecar.podMonitor" -}}
{{- $v := include "cosyvoice-sidecar.values" . | fromYaml -}}
{{- if and $v.metrics.enabled $v.metrics.podMonitor.enabled -}}
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ printf "%s-cosyvoice-sidecar" .context.Release.Name | trunc 63 | trimSuffix "-" }}
  labels:
    app.kubernetes.io/name: cosyvoice-sidecar
    app.kubernetes.io/instance: {{ .context.Release.Name }}
    {{- with $v.metrics.podMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      cosyvoice-sidecar/injected: "true"
  podMetricsEndpoints:
    - port: sidecar-metrics
      path: /metrics
      interval: {{ $v.metrics.podMonitor.interval }}
{{- end }}
{{- end -}}

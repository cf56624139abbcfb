{{- define "tts-app.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
terminationGracePeriodSeconds: the app's shutdown, then the sidecar's (drain
grace, then 2 s for the calls it ends and up to 5 s to close the pool, plus 3 s
of margin), since a native sidecar is stopped only after the app containers
have exited.
*/}}
{{- define "tts-app.gracePeriod" -}}
{{- $sidecar := include "cosyvoice-sidecar.values" (dict "values" .Values.cosyvoiceSidecar) | fromYaml -}}
{{- $drain := $sidecar.settings.COSYVOICE_SIDECAR_DRAIN_GRACE_S | float64 -}}
{{- add (int .Values.appShutdownSeconds) (int (ceil (addf $drain 10))) -}}
{{- end -}}

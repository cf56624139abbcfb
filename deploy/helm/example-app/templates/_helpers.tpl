{{- define "tts-app.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
terminationGracePeriodSeconds: the app's shutdown, then the sidecar's (drain
grace + upstream cancel + 1 s + 7 s to close the pool, with margin), since a
native sidecar is stopped only after the app containers have exited.
*/}}
{{- define "tts-app.gracePeriod" -}}
{{- $sidecar := include "cosyvoice-sidecar.values" (dict "values" .Values.cosyvoiceSidecar) | fromYaml -}}
{{- $drain := $sidecar.settings.COSYVOICE_SIDECAR_DRAIN_GRACE_S | float64 -}}
{{- $cancel := $sidecar.settings.COSYVOICE_SIDECAR_CANCEL_TIMEOUT_S | float64 -}}
{{- add (int .Values.appShutdownSeconds) (int (ceil (addf $drain $cancel 8))) -}}
{{- end -}}

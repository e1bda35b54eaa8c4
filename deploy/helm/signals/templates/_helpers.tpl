{{/* Names and labels shared by every template. */}}

{{- define "signals.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "signals.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "serve") */}}
{{- define "signals.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "signals.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "signals.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "signals.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "signals.secretName" -}}
{{ default (printf "%s-tokens" (include "signals.fullname" .)) .Values.auth.existingSecret }}
{{- end -}}

{{/*
The batch's shares: `shares` contiguous ranges "A-B" splitting partitions
0..partitions-1, the first (partitions mod shares) one partition longer.
Returns them joined by spaces.
*/}}
{{- define "signals.batchShares" -}}
{{- $partitions := int .Values.kafka.partitions -}}
{{- $shares := int .Values.batch.shares -}}
{{- if lt $shares 1 -}}
{{- fail "batch.shares must be at least 1" -}}
{{- end -}}
{{- if gt $shares $partitions -}}
{{- fail (printf "batch.shares (%d) must not exceed kafka.partitions (%d): a share is at least one partition" $shares $partitions) -}}
{{- end -}}
{{- $ranges := list -}}
{{- range $i := until $shares -}}
{{- $from := div (mul $i $partitions) $shares -}}
{{- $to := sub (div (mul (add $i 1) $partitions) $shares) 1 -}}
{{- $ranges = append $ranges (printf "%d-%d" $from $to) -}}
{{- end -}}
{{- join " " $ranges -}}
{{- end -}}

{{/* Pod annotations: the config's checksum (a config change rolls the pods) and Prometheus's. */}}
{{- define "signals.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* Environment of every Signals container: the config file, then `env`. */}}
{{- define "signals.env" -}}
- name: SIGNALS_CONFIG
  value: /etc/signals/signals.toml
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The serving API's tokens, from the Secret. */}}
{{- define "signals.tokenEnv" -}}
- name: SIGNALS_SERVER__API_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ include "signals.secretName" . }}
      key: api-tokens
- name: SIGNALS_SERVER__ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "signals.secretName" . }}
      key: admin-token
{{- end -}}

{{- define "signals.volumes" -}}
- name: config
  configMap:
    name: {{ include "signals.fullname" . }}-config
- name: data
  emptyDir: {}
{{- end -}}

{{- define "signals.volumeMounts" -}}
- name: config
  mountPath: /etc/signals
  readOnly: true
- name: data
  mountPath: /var/lib/signals
{{- end -}}

{{/*
Prometheus metrics of a role (values `metrics` and `<role>.metricsPort`; README "Observability").
Call each with (dict "ctx" $ "role" .Values.teacher); each renders nothing while metrics are off.
*/}}

{{/* The scrape annotations of a role's pods (annotation-based discovery). */}}
{{- define "syllabus.scrapeAnnotations" -}}
{{- if and .ctx.Values.metrics.enabled .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .role.metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The container port named "metrics" (the NetworkPolicies and the ServiceMonitor refer to it by name). */}}
{{- define "syllabus.metricsContainerPort" -}}
{{- if .ctx.Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .role.metricsPort }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Names, labels and the wiring every Syllabus workload shares. */}}

{{- define "syllabus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, shortened so "<fullname>-<component>" stays within 63 characters. */}}
{{- define "syllabus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "syllabus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "ctx" $ "component" "teacher"). */}}
{{- define "syllabus.labels" -}}
helm.sh/chart: {{ include "syllabus.chart" .ctx }}
{{ include "syllabus.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: syllabus
{{- end }}

{{/* Selector labels: stable across upgrades (never add the version here). */}}
{{- define "syllabus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "syllabus.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "syllabus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "syllabus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of a Syllabus role; call with (dict "ctx" $ "role" .Values.teacher). */}}
{{- define "syllabus.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .ctx.Values.image.tag }}
{{- if .ctx.Values.image.registry }}
{{- printf "%s/%s:%s" .ctx.Values.image.registry .role.repository $tag }}
{{- else }}
{{- printf "%s:%s" .role.repository $tag }}
{{- end }}
{{- end }}

{{- define "syllabus.configMapName" -}}
{{- printf "%s-config" (include "syllabus.fullname" .) }}
{{- end }}

{{- define "syllabus.secretName" -}}
{{- default (printf "%s-secrets" (include "syllabus.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* host:port of a role's Service, as the SYLLABUS_*_ADDRESS values clients use. */}}
{{- define "syllabus.address" -}}
{{- printf "%s-%s:%d" (include "syllabus.fullname" .ctx) .component (int .port) }}
{{- end }}

{{- define "syllabus.temporalAddress" -}}
{{- if .Values.config.temporalAddress }}
{{- .Values.config.temporalAddress }}
{{- else if .Values.temporal.enabled }}
{{- printf "%s-temporal:%d" (include "syllabus.fullname" .) (int .Values.temporal.port) }}
{{- else }}
{{- fail "config.temporalAddress is required when temporal.enabled is false (see values-external.yaml)" }}
{{- end }}
{{- end }}

{{- define "syllabus.s3Endpoint" -}}
{{- if .Values.config.s3Endpoint }}
{{- .Values.config.s3Endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "%s-minio:%d" (include "syllabus.fullname" .) (int .Values.minio.port) }}
{{- end }}
{{- end }}

{{- define "syllabus.artifactUrl" -}}
{{- if .Values.config.artifactUrl }}
{{- .Values.config.artifactUrl }}
{{- else if .Values.minio.enabled }}
{{- printf "s3://%s/artifacts" .Values.minio.bucket }}
{{- else }}
{{- fail "config.artifactUrl is required when minio.enabled is false: every pod must share one artifact store (e.g. s3://bucket/prefix)" }}
{{- end }}
{{- end }}

{{/* Names of the keys of the Secret, one per secret field of syllabus/config.py. The gateway gets
its own object-store user (GATEWAY_S3_*: read and write, never delete), the other roles the artifact
user (SYLLABUS_S3_*); call with (dict "ctx" $ "component" NAME). */}}
{{- define "syllabus.secretEnv" -}}
{{- $secret := include "syllabus.secretName" .ctx -}}
{{- $s3 := ternary "GATEWAY_S3" "SYLLABUS_S3" (eq .component "gateway") -}}
- name: SYLLABUS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SYLLABUS_DATABASE_URL
- name: SYLLABUS_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $s3 }}_ACCESS_KEY
- name: SYLLABUS_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $s3 }}_SECRET_KEY
{{- end }}

{{/* The service-role token: the worker, teacher, student and trainer have it, the gateway does not. */}}
{{- define "syllabus.serviceTokenEnv" -}}
- name: SYLLABUS_SERVICE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "syllabus.secretName" . }}
      key: SYLLABUS_SERVICE_TOKEN
{{- end }}

{{/* Env of every Syllabus container: the ConfigMap (envFrom) + secretKeyRefs + the role's extras. */}}
{{- define "syllabus.envFrom" -}}
- configMapRef:
    name: {{ include "syllabus.configMapName" . }}
{{- end }}

{{- define "syllabus.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/* Writable volumes under a read-only root filesystem. */}}
{{- define "syllabus.volumes" -}}
- name: home
  emptyDir: {}
- name: tmp
  emptyDir: {}
- name: model-cache
{{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "syllabus.volumeMounts" -}}
- name: home
  mountPath: {{ .Values.config.home }}
- name: tmp
  mountPath: /tmp
- name: model-cache
  mountPath: {{ .Values.config.modelCache }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ .Values.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Checksum of the ConfigMap so pods roll when a SYLLABUS_* setting changes. */}}
{{- define "syllabus.configChecksum" -}}
{{- include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/* The Temporal client certificate Secret: only the two Temporal clients (gateway, worker) mount it. */}}
{{- define "syllabus.temporalTlsVolume" -}}
{{- if .Values.temporalTls.enabled }}
- name: temporal-tls
  secret:
    secretName: {{ .Values.temporalTls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "syllabus.temporalTlsMount" -}}
{{- if .Values.temporalTls.enabled }}
- name: temporal-tls
  mountPath: {{ .Values.temporalTls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* A MinIO (IAM) policy: `actions` on the objects of `bucket`, and listing it. */}}
{{- define "syllabus.minioPolicy" -}}
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": ["arn:aws:s3:::{{ .bucket }}"]},
  {"Effect": "Allow", "Action": {{ toJson .actions }}, "Resource": ["arn:aws:s3:::{{ .bucket }}/*"]}]}
{{- end }}

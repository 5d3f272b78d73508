{{/* Pod/container security for the in-chart dev dependencies, which run as their images' own users. */}}
{{- define "syllabus.depPodSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "syllabus.depContainerSecurity" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end }}

{{/* A PVC or an emptyDir named "data"; call with (dict "ctx" $ "component" "minio" "persistence" .Values.minio.persistence). */}}
{{- define "syllabus.depDataVolume" -}}
- name: data
{{- if .persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "syllabus.fullname" .ctx }}-{{ .component }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{- define "syllabus.depPvc" -}}
{{- if .persistence.enabled }}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "syllabus.fullname" .ctx }}-{{ .component }}
  labels:
    {{- include "syllabus.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
  annotations:
    # Keep the data when the release is uninstalled.
    helm.sh/resource-policy: keep
spec:
  accessModes: [ReadWriteOnce]
  {{- if .persistence.storageClass }}
  storageClassName: {{ .persistence.storageClass }}
  {{- end }}
  resources:
    requests:
      storage: {{ .persistence.size }}
{{- end }}
{{- end }}

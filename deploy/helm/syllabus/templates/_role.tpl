{{/*
One gRPC role (teacher, student, trainer, gateway): Deployment + Service (+ PDB, + HPA if the role
has `autoscaling`). Call with
  (dict "ctx" $ "component" "teacher" "role" .Values.teacher "module" "teacher_svc"
        "service" "syllabus.teacher.v1.TeacherService")
Probes are the kubelet's native gRPC probes against the grpc.health.v1 service every Syllabus server
registers (syllabus/serving.py): NOT_SERVING until the model is loaded and again on SIGTERM.
*/}}
{{/* The kubelet's native gRPC probe, or with TLS on (it cannot do TLS) the health check script. */}}
{{- define "syllabus.grpcProbe" -}}
{{- if .ctx.Values.tls.enabled }}
exec:
  command: ["/usr/local/bin/syllabus-healthcheck", {{ printf "127.0.0.1:%d" (int .role.port) | quote }}, {{ .service | quote }}]
{{- else }}
grpc:
  port: {{ .role.port }}
  service: {{ .service }}
{{- end }}
{{- end }}

{{- define "syllabus.grpcRole" -}}
{{- $ctx := .ctx -}}
{{- $role := .role -}}
{{- $labels := dict "ctx" $ctx "component" .component -}}
{{- $name := printf "%s-%s" (include "syllabus.fullname" $ctx) .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "syllabus.labels" $labels | nindent 4 }}
spec:
  {{- if not (and $role.autoscaling $role.autoscaling.enabled) }}
  replicas: {{ $role.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "syllabus.selectorLabels" $labels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "syllabus.labels" $labels | nindent 8 }}
      annotations:
        checksum/config: {{ include "syllabus.configChecksum" $ctx }}
        {{- with include "syllabus.scrapeAnnotations" (dict "ctx" $ctx "role" $role) }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $role.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "syllabus.serviceAccountName" $ctx }}
      automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountToken }}
      {{- with $ctx.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "syllabus.podSecurityContext" $ctx | nindent 8 }}
      terminationGracePeriodSeconds: {{ $role.terminationGracePeriodSeconds }}
      containers:
        - name: {{ .component }}
          image: {{ include "syllabus.image" (dict "ctx" $ctx "role" $role) }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          args:
            - --address
            - {{ printf "0.0.0.0:%d" (int $role.port) | quote }}
            {{- if $role.preload }}
            - --preload
            - {{ $role.preload | quote }}
            {{- end }}
            {{- with $role.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $role.port }}
              protocol: TCP
            {{- with include "syllabus.metricsContainerPort" (dict "ctx" $ctx "role" $role) }}
            {{- . | nindent 12 }}
            {{- end }}
          envFrom:
            {{- include "syllabus.envFrom" $ctx | nindent 12 }}
          env:
            {{- include "syllabus.secretEnv" (dict "ctx" $ctx "component" .component) | nindent 12 }}
            {{- if ne .component "gateway" }}
            {{- include "syllabus.serviceTokenEnv" $ctx | nindent 12 }}
            {{- end }}
            {{- with $role.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            {{- include "syllabus.grpcProbe" (dict "ctx" $ctx "role" $role "service" .service) | nindent 12 }}
            periodSeconds: {{ $role.startupProbe.periodSeconds }}
            failureThreshold: {{ $role.startupProbe.failureThreshold }}
            timeoutSeconds: 5
          readinessProbe:
            {{- include "syllabus.grpcProbe" (dict "ctx" $ctx "role" $role "service" .service) | nindent 12 }}
            periodSeconds: 10
            failureThreshold: 3
            timeoutSeconds: 5
          livenessProbe:
            {{- include "syllabus.grpcProbe" (dict "ctx" $ctx "role" $role "service" .service) | nindent 12 }}
            periodSeconds: 20
            failureThreshold: 6
            timeoutSeconds: 5
          resources:
            {{- toYaml $role.resources | nindent 12 }}
          securityContext:
            {{- toYaml $ctx.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "syllabus.volumeMounts" $ctx | nindent 12 }}
            {{- if eq .component "gateway" }}
            - name: auth-tokens
              mountPath: {{ $ctx.Values.auth.tokensDir }}
              readOnly: true
            {{- include "syllabus.temporalTlsMount" $ctx | nindent 12 }}
            {{- end }}
            {{- if $role.shmSize }}
            - name: dshm
              mountPath: /dev/shm
            {{- end }}
        {{- if and $ctx.Values.config.serviceQueues (ne .component "gateway") }}
        {{- /* This replica's share of its service's task queue (orchestrator/routing.py): it pulls work
        only while the replica beside it is healthy, `config.serviceWorkerSlots` at a time. */}}
        - name: worker
          image: {{ include "syllabus.image" (dict "ctx" $ctx "role" $ctx.Values.worker) }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          args: ["--service", {{ .component | quote }}]
          envFrom:
            {{- include "syllabus.envFrom" $ctx | nindent 12 }}
          env:
            - name: {{ printf "SYLLABUS_%s_ADDRESS" (upper .component) }}
              value: {{ printf "127.0.0.1:%d" (int $role.port) | quote }}
            - name: SYLLABUS_WORKER_METRICS_PORT
              value: "0"
            {{- include "syllabus.secretEnv" (dict "ctx" $ctx "component" "worker") | nindent 12 }}
            {{- include "syllabus.serviceTokenEnv" $ctx | nindent 12 }}
          resources:
            {{- toYaml $ctx.Values.worker.resources | nindent 12 }}
          securityContext:
            {{- toYaml $ctx.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "syllabus.volumeMounts" $ctx | nindent 12 }}
            {{- include "syllabus.temporalTlsMount" $ctx | nindent 12 }}
        {{- end }}
      volumes:
        {{- include "syllabus.volumes" $ctx | nindent 8 }}
        {{- if eq .component "gateway" }}
        - name: auth-tokens
          secret:
            secretName: {{ include "syllabus.secretName" $ctx }}
            defaultMode: 0440
            items:
              - key: tokens.json
                path: tokens.json
        {{- include "syllabus.temporalTlsVolume" $ctx | nindent 8 }}
        {{- else if $ctx.Values.config.serviceQueues }}
        {{- include "syllabus.temporalTlsVolume" $ctx | nindent 8 }}
        {{- end }}
        {{- if $role.shmSize }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $role.shmSize }}
        {{- end }}
      {{- with $role.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $role.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $role.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "syllabus.labels" $labels | nindent 4 }}
  {{- with $role.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $role.service.type }}
  selector:
    {{- include "syllabus.selectorLabels" $labels | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $role.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{ include "syllabus.pdbAndHpa" . }}
{{- end }}

{{/* PodDisruptionBudget and HorizontalPodAutoscaler of a role (each only when enabled). */}}
{{- define "syllabus.pdbAndHpa" -}}
{{- $ctx := .ctx -}}
{{- $role := .role -}}
{{- $labels := dict "ctx" $ctx "component" .component -}}
{{- $name := printf "%s-%s" (include "syllabus.fullname" $ctx) .component -}}
{{- if $role.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "syllabus.labels" $labels | nindent 4 }}
spec:
  maxUnavailable: {{ $role.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "syllabus.selectorLabels" $labels | nindent 6 }}
{{- end }}
{{- if and $role.autoscaling $role.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  labels:
    {{- include "syllabus.labels" $labels | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicas: {{ $role.autoscaling.minReplicas }}
  maxReplicas: {{ $role.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $role.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end }}

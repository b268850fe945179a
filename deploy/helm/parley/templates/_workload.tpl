{{/*
Per-component objects. Args for all: dict "root" $ "name" <component key> "c" <component values>.
*/}}

{{- define "parley.component.serviceAccount" -}}
{{- $sel := dict "root" .root "name" .name }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "parley.componentName" $sel }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
# No component talks to the Kubernetes API.
automountServiceAccountToken: false
{{- end -}}

{{- define "parley.component.configMap" -}}
{{- $sel := dict "root" .root "name" .name }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "parley.componentName" $sel }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
data:
  {{- include "parley.configEnv" . | nindent 2 }}
{{- end -}}

{{- define "parley.component.service" -}}
{{- $sel := dict "root" .root "name" .name }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "parley.componentName" $sel }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
  {{- with .c.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: ClusterIP
  {{- if .c.service.headless }}
  # Headless: clients resolve every pod and balance gRPC calls themselves (round_robin).
  clusterIP: None
  {{- end }}
  # Both tracks of a canary pair (and Argo's canary pods) sit behind this one Service.
  selector:
    {{- include "parley.selectorLabels" $sel | nindent 4 }}
  ports:
    {{- range $pname, $port := .c.ports }}
    - name: {{ $pname }}
      port: {{ $port }}
      targetPort: {{ $pname }}
      protocol: TCP
      {{- if eq $pname "grpc" }}
      appProtocol: grpc
      {{- else }}
      appProtocol: http
      {{- end }}
    {{- end }}
{{- end -}}

{{/* A Deployment. Extra args: track, replicas (omitted when "" : an autoscaler owns it),
suffix ("" or "-canary"), image. */}}
{{- define "parley.component.deployment" -}}
{{- $sel := dict "root" .root "name" .name }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "parley.componentName" $sel }}{{ .suffix }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
    parley.dev/track: {{ .track }}
spec:
  {{- if ne (toString .replicas) "" }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "parley.selectorLabels" $sel | nindent 6 }}
      parley.dev/track: {{ .track }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    {{- include "parley.podTemplate" . | nindent 4 }}
{{- end -}}

{{- define "parley.component.rollout" -}}
{{- $sel := dict "root" .root "name" .name }}
{{- $c := .c }}
{{- $name := include "parley.componentName" $sel }}
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: {{ $name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
spec:
  {{- if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "parley.selectorLabels" $sel | nindent 6 }}
  template:
    {{- include "parley.podTemplate" (dict "root" .root "name" .name "c" .c "image" .c.image "track" "") | nindent 4 }}
  strategy:
    canary:
      # No traffic router: the weight is the share of pods running the new version.
      maxSurge: 25%
      maxUnavailable: 0
      canaryMetadata:
        labels:
          parley.dev/track: canary
      stableMetadata:
        labels:
          parley.dev/track: stable
      {{- if $c.canary.analysis.enabled }}
      # Background analysis from the first step on; a failed measurement aborts the rollout.
      analysis:
        templates:
          - templateName: {{ $name }}-canary
        startingStep: 1
        args:
          - name: canary-hash
            valueFrom:
              podTemplateHashValue: Latest
      {{- end }}
      steps:
        {{- toYaml $c.canary.steps | nindent 8 }}
{{- end -}}

{{/* Error ratio and p99 latency measured on the canary pods only, and their restarts. */}}
{{- define "parley.component.analysisTemplate" -}}
{{- $sel := dict "root" .root "name" .name }}
{{- $c := .c }}
{{- $a := $c.canary.analysis }}
{{- $name := include "parley.componentName" $sel }}
{{- $canary := include "parley.podMatchers" (dict "root" .root "name" .name "hash" "{{args.canary-hash}}") }}
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: {{ $name }}-canary
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
spec:
  args:
    - name: canary-hash
  metrics:
    {{- if $a.errorMetric }}
    # Failed share of the canary pods' work ({{ $a.errorMatcher }}). No traffic: 0.
    - name: error-ratio
      interval: {{ $a.interval }}
      failureLimit: {{ $a.failureLimit }}
      successCondition: result[0] <= {{ $a.maxErrorRatio }}
      provider:
        prometheus:
          address: {{ .root.Values.prometheus.url }}
          query: >-
            (
            sum(rate({{ $a.errorMetric }}{ {{- $canary -}},{{ $a.errorMatcher }}}[{{ $a.window }}]))
            /
            sum(rate({{ $a.errorMetric }}{ {{- $canary -}} }[{{ $a.window }}]))
            ) or vector(0)
    {{- end }}
    {{- if $a.latencyMetric }}
    - name: p99-latency
      interval: {{ $a.interval }}
      failureLimit: {{ $a.failureLimit }}
      # NaN: nothing measured in the window.
      successCondition: isNaN(result[0]) || result[0] <= {{ $a.maxP99Seconds }}
      provider:
        prometheus:
          address: {{ .root.Values.prometheus.url }}
          query: >-
            histogram_quantile(0.99,
            sum by (le) (rate({{ $a.latencyMetric }}{ {{- $canary -}}{{ with $a.latencyMatcher }},{{ . }}{{ end }}}[{{ $a.window }}]))
            ) or vector(0)
    {{- end }}
    # Container restarts of the canary pods (kube-state-metrics).
    - name: restarts
      interval: {{ $a.interval }}
      failureLimit: {{ $a.failureLimit }}
      successCondition: result[0] <= {{ $a.maxRestarts }}
      provider:
        prometheus:
          address: {{ .root.Values.prometheus.url }}
          query: >-
            sum(increase(kube_pod_container_status_restarts_total{ {{- $canary -}} }[{{ $a.window }}])) or vector(0)
    {{- with $a.extraMetrics }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "parley.component.pdb" -}}
{{- $sel := dict "root" .root "name" .name }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "parley.componentName" $sel }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
spec:
  {{- /* minAvailable, when set, replaces the default maxUnavailable: helm lint keeps a default
  that the user's values set to null, so a null cannot be what picks one of the two. */}}
  {{- if not (kindIs "invalid" .c.pdb.minAvailable) }}
  minAvailable: {{ .c.pdb.minAvailable }}
  {{- else }}
  {{- /* not `default 1`: that would turn an explicit 0 (no voluntary evictions) into 1 */}}
  maxUnavailable: {{ if kindIs "invalid" .c.pdb.maxUnavailable }}1{{ else }}{{ .c.pdb.maxUnavailable }}{{ end }}
  {{- end }}
  # Pods stuck unready must not block node drains.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "parley.selectorLabels" $sel | nindent 6 }}
{{- end -}}

{{/* Replica bounds for the autoscaler. With a canary pair it scales the stable Deployment only,
so the canary's fixed share is taken off both bounds (min stays >= 1). Returns JSON {min, max}. */}}
{{- define "parley.scaleBounds" -}}
{{- $as := .c.autoscaling -}}
{{- $min := int $as.minReplicas -}}
{{- $max := int $as.maxReplicas -}}
{{- if eq .c.canary.strategy "pair" -}}
{{- $canary := (include "parley.pairReplicas" .c | fromJson).canary | int -}}
{{- $min = max 1 (sub $min $canary) | int -}}
{{- $max = max $min (sub $max $canary) | int -}}
{{- end -}}
{{- toJson (dict "min" $min "max" $max) -}}
{{- end -}}

{{/* The autoscaler's target: the Rollout, or the (stable) Deployment. */}}
{{- define "parley.scaleTargetRef" -}}
{{- if eq .c.canary.strategy "argo" -}}
apiVersion: argoproj.io/v1alpha1
kind: Rollout
{{- else -}}
apiVersion: apps/v1
kind: Deployment
{{- end }}
name: {{ include "parley.componentName" (dict "root" .root "name" .name) }}
{{- end -}}

{{/* Total of the scaling signal over the component's pods, as PromQL (KEDA divides it by the
per-pod target). */}}
{{- define "parley.scalingQuery" -}}
{{- $m := .c.autoscaling.metric -}}
{{- if $m.query -}}
{{- $m.query -}}
{{- else if eq $m.type "counter" -}}
{{- printf "sum(rate(%s{%s}[2m]))" $m.name (include "parley.podMatchers" (dict "root" .root "name" .name)) -}}
{{- else -}}
{{- printf "sum(%s{%s})" $m.name (include "parley.podMatchers" (dict "root" .root "name" .name)) -}}
{{- end -}}
{{- end -}}

{{- define "parley.hpaBehavior" -}}
{{- $b := .c.autoscaling.behavior -}}
scaleUp:
  stabilizationWindowSeconds: {{ $b.scaleUpStabilizationSeconds }}
  selectPolicy: Max
  policies:
    - type: Percent
      value: 100
      periodSeconds: 60
    - type: Pods
      value: 4
      periodSeconds: 60
scaleDown:
  stabilizationWindowSeconds: {{ $b.scaleDownStabilizationSeconds }}
  selectPolicy: Min
  policies:
    - type: Pods
      value: {{ $b.scaleDownPodsPerMinute }}
      periodSeconds: 60
{{- end -}}

{{- define "parley.component.hpa" -}}
{{- $sel := dict "root" .root "name" .name }}
{{- $as := .c.autoscaling }}
{{- $m := $as.metric }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "parley.componentName" $sel }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
spec:
  scaleTargetRef:
    {{- include "parley.scaleTargetRef" . | nindent 4 }}
  {{- $bounds := include "parley.scaleBounds" . | fromJson }}
  minReplicas: {{ $bounds.min }}
  maxReplicas: {{ $bounds.max }}
  metrics:
    {{- if $m.name }}
    {{- $metricName := $m.hpaMetricName | default $m.name }}
    {{- if eq $m.hpaMetricType "Pods" }}
    # Per-pod custom metric served by a metrics adapter (e.g. prometheus-adapter).
    - type: Pods
      pods:
        metric:
          name: {{ $metricName }}
        target:
          type: AverageValue
          averageValue: {{ $m.targetAverage | quote }}
    {{- else }}
    # External metric (e.g. prometheus-adapter external rules), averaged over the pods.
    - type: External
      external:
        metric:
          name: {{ $metricName }}
          selector:
            matchLabels:
              namespace: {{ .root.Release.Namespace }}
        target:
          type: AverageValue
          averageValue: {{ $m.targetAverage | quote }}
    {{- end }}
    {{- end }}
    {{- if gt (int $as.cpuUtilization) 0 }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $as.cpuUtilization }}
    {{- end }}
  behavior:
    {{- include "parley.hpaBehavior" . | nindent 4 }}
{{- end -}}

{{- define "parley.component.scaledObject" -}}
{{- $sel := dict "root" .root "name" .name }}
{{- $as := .c.autoscaling }}
{{- $name := include "parley.componentName" $sel }}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
spec:
  scaleTargetRef:
    {{- include "parley.scaleTargetRef" . | nindent 4 }}
  {{- $bounds := include "parley.scaleBounds" . | fromJson }}
  minReplicaCount: {{ $bounds.min }}
  maxReplicaCount: {{ $bounds.max }}
  pollingInterval: {{ $as.keda.pollingInterval }}
  cooldownPeriod: {{ $as.keda.cooldownPeriod }}
  advanced:
    horizontalPodAutoscalerConfig:
      name: {{ $name }}
      behavior:
        {{- include "parley.hpaBehavior" . | nindent 8 }}
  triggers:
    {{- if $as.metric.name }}
    - type: prometheus
      metricType: AverageValue
      metadata:
        serverAddress: {{ .root.Values.prometheus.url }}
        query: {{ include "parley.scalingQuery" . | quote }}
        threshold: {{ $as.metric.targetAverage | quote }}
        # No samples (Prometheus down, no pods yet): keep the current size rather than fail.
        ignoreNullValues: "true"
      {{- with $as.keda.authenticationRef }}
      authenticationRef:
        name: {{ . }}
      {{- end }}
    {{- end }}
    {{- if gt (int $as.cpuUtilization) 0 }}
    - type: cpu
      metricType: Utilization
      metadata:
        value: {{ $as.cpuUtilization | quote }}
    {{- end }}
{{- end -}}

{{/*
A component's environment and pod template. Args for all: dict "root" $ "name" <key> "c" <values>.
*/}}

{{/* Non-secret environment, rendered into the component's ConfigMap (sorted keys). */}}
{{- define "parley.configEnv" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := .c -}}
{{- $env := dict
  "PARLEY_SERVICE_NAME" $c.serviceName
  "OTEL_SERVICE_NAME" $c.serviceName
  "PARLEY_HOST" "0.0.0.0"
  "PARLEY_LOG_LEVEL" $v.global.logLevel
  "PARLEY_LOG_FORMAT" $v.global.logFormat
-}}
{{- range $pname, $var := $c.portEnv -}}
{{- $_ := set $env $var (toString (int (index $c.ports $pname))) -}}
{{- end -}}
{{- range $var := $c.drainEnv -}}
{{- $_ := set $env $var (toString (int $c.drainSeconds)) -}}
{{- end -}}
{{- if $c.ports.grpc -}}
{{- if $v.auth.restrictCallers -}}
{{- $callers := list -}}
{{- range $caller := include "parley.callers" . | fromJsonArray -}}
{{- $callers = append $callers (index $v.components $caller).serviceName -}}
{{- end -}}
{{- /* The operators' tokens pass the same verifier before the operator check. */ -}}
{{- $callers = concat $callers $c.extraAllowedCallers $c.operatorCallers.callers | uniq | sortAlpha -}}
{{- $_ := set $env "PARLEY_AUTH_ALLOWED_CALLERS" (toJson $callers) -}}
{{- end -}}
{{- end -}}
{{- with $c.operatorCallers.env -}}
{{- $_ := set $env . (toJson $c.operatorCallers.callers) -}}
{{- end -}}
{{- range $dep := $c.dependsOn -}}
{{- $_ := set $env (include "parley.addrEnvName" (dict "name" $dep)) (include "parley.address" (dict "root" $root "name" $dep)) -}}
{{- end -}}
{{- if $c.tenantsFile -}}
{{- $_ := set $env "PARLEY_TENANTS_FILE" (printf "%s/tenants.yaml" $v.tenantsConfig.mountPath) -}}
{{- end -}}
{{- if and (has "redis" $c.datastores) $v.redis.url -}}
{{- $_ := set $env "REDIS_URL" $v.redis.url -}}
{{- end -}}
{{- if $c.livekit -}}
{{- $_ := set $env "LIVEKIT_URL" $v.livekit.url -}}
{{- $_ := set $env "PARLEY_AGENT_NAME" (include "parley.agentName" $root) -}}
{{- end -}}
{{- with include "parley.usageSpoolMaxBytes" . -}}
{{- $_ := set $env "PARLEY_USAGE_SPOOL_MAX_BYTES" . -}}
{{- end -}}
{{- if and (has "anthropic" $c.providers) $v.providers.anthropic.baseUrl -}}
{{- $_ := set $env "ANTHROPIC_BASE_URL" $v.providers.anthropic.baseUrl -}}
{{- end -}}
{{- if and (has "gemini" $c.providers) $v.providers.gemini.baseUrl -}}
{{- $_ := set $env "GOOGLE_GEMINI_BASE_URL" $v.providers.gemini.baseUrl -}}
{{- end -}}
{{- if and (has "voyage" $c.providers) $v.providers.voyage.baseUrl -}}
{{- $_ := set $env "VOYAGE_BASE_URL" $v.providers.voyage.baseUrl -}}
{{- end -}}
{{- if $v.otel.endpoint -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $v.otel.endpoint -}}
{{- end -}}
{{- $_ := set $env "OTEL_TRACES_EXPORTER" ($v.otel.tracesExporter | default (ternary "otlp" "none" (not (empty $v.otel.endpoint)))) -}}
{{- range $k, $val := $v.global.env -}}
{{- $_ := set $env $k (toString $val) -}}
{{- end -}}
{{- range $k, $val := $c.env -}}
{{- $_ := set $env $k (toString $val) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Environment from Secrets (by reference only) and from the downward API. */}}
{{- define "parley.secretEnv" -}}
{{- $v := .root.Values -}}
{{- $c := .c -}}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- $attrs := list "k8s.pod.name=$(K8S_POD_NAME)" "k8s.node.name=$(K8S_NODE_NAME)" (printf "k8s.namespace.name=%s" .root.Release.Namespace) (printf "service.namespace=%s" (include "parley.fullname" .root)) -}}
{{- if eq $v.mode "dedicated" -}}
{{- $attrs = append $attrs (printf "parley.tenant_id=%s" $v.tenant.id) -}}
{{- end -}}
{{- range $k, $val := $v.otel.resourceAttributes -}}
{{- $attrs = append $attrs (printf "%s=%s" $k $val) -}}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
- name: PARLEY_AUTH_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $v.auth.secretRef.name }}
      key: {{ $v.auth.secretRef.key }}
{{- if has "postgres" $c.datastores }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgres.secretRef.name }}
      key: {{ $v.postgres.secretRef.key }}
{{- end }}
{{- if and (has "redis" $c.datastores) (not $v.redis.url) }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.secretRef.name }}
      key: {{ $v.redis.secretRef.key }}
{{- end }}
{{- range $p := $c.providers }}
{{- $pv := index $v.providers $p }}
- name: {{ upper $p }}_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.providers.secretName }}
      key: {{ $pv.apiKeyKey }}
      optional: {{ $pv.optional }}
{{- end }}
{{- if $c.livekit }}
- name: LIVEKIT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.livekit.secretRef.name }}
      key: {{ $v.livekit.secretRef.apiKeyKey }}
- name: LIVEKIT_API_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $v.livekit.secretRef.name }}
      key: {{ $v.livekit.secretRef.apiSecretKey }}
{{- end }}
{{- range $e := $c.secretEnv }}
- name: {{ $e.name }}
  valueFrom:
    secretKeyRef:
      name: {{ $e.secretName }}
      key: {{ $e.key }}
      optional: {{ $e.optional | default false }}
{{- end }}
{{- end -}}

{{/* Probe handler for the component's health endpoint. */}}
{{- define "parley.probeHandler" -}}
{{- $port := index .c.ports .c.probe.port -}}
{{- if eq .c.probe.type "grpc" -}}
grpc:
  port: {{ $port }}
{{- else -}}
httpGet:
  path: {{ .c.probe.path }}
  port: {{ .c.probe.port }}
{{- end -}}
{{- end -}}

{{/* Pod and container security settings (Pod Security `restricted`), shared by the
components' pods and the database Jobs. Arg: root. */}}
{{- define "parley.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "parley.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The pod template. Extra args: track (stable|canary), image. */}}
{{- define "parley.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := .c -}}
{{- $sel := dict "root" $root "name" .name -}}
{{- $fullName := include "parley.componentName" $sel -}}
metadata:
  labels:
    {{- include "parley.labels" $sel | nindent 4 }}
    {{- if .track }}
    parley.dev/track: {{ .track }}
    {{- end }}
    {{- with $c.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/env: {{ include "parley.configEnv" . | sha256sum }}
    {{- if and $c.tenantsFile (not $v.tenantsConfig.existingConfigMap) }}
    checksum/tenants: {{ include "parley.tenantsFile" $root | sha256sum }}
    {{- end }}
    {{- with $c.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ $fullName }}
  automountServiceAccountToken: false
  # Service links would inject <SERVICE>_PORT variables, some of them PARLEY_-prefixed.
  enableServiceLinks: false
  # preStop sleep + drain (PARLEY_DRAIN_SECONDS={{ $c.drainSeconds }}) + margin.
  terminationGracePeriodSeconds: {{ include "parley.terminationGrace" $c }}
  {{- with $c.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.global.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "parley.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: {{ $c.serviceName }}
      image: {{ include "parley.imageRef" (dict "root" $root "image" .image) }}
      imagePullPolicy: {{ $v.global.image.pullPolicy }}
      {{- with $c.command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- range $pname, $port := $c.ports }}
        - name: {{ $pname }}
          containerPort: {{ $port }}
          protocol: TCP
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ $fullName }}
      env:
        {{- include "parley.secretEnv" . | nindent 8 }}
      startupProbe:
        {{- include "parley.probeHandler" . | nindent 8 }}
        periodSeconds: 2
        timeoutSeconds: 2
        failureThreshold: 60
      readinessProbe:
        {{- include "parley.probeHandler" . | nindent 8 }}
        periodSeconds: 5
        timeoutSeconds: 2
        failureThreshold: 2
      livenessProbe:
        {{- include "parley.probeHandler" . | nindent 8 }}
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      {{- if gt (int $c.preStopSleepSeconds) 0 }}
      # Keep serving while the endpoint removal reaches every proxy, then SIGTERM starts the drain.
      lifecycle:
        preStop:
          exec:
            command: ["sleep", "{{ $c.preStopSleepSeconds }}"]
      {{- end }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      securityContext:
        {{- include "parley.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if $c.tenantsFile }}
        - name: tenants
          mountPath: {{ $v.tenantsConfig.mountPath }}
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $c.tmpSizeLimit }}
    {{- if $c.tenantsFile }}
    - name: tenants
      configMap:
        name: {{ include "parley.tenantsConfigMapName" $root }}
    {{- end }}
  {{- if $c.topologySpread.enabled }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: {{ $c.topologySpread.zone }}
      labelSelector:
        matchLabels:
          {{- include "parley.selectorLabels" $sel | nindent 10 }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: {{ $c.topologySpread.hostname }}
      labelSelector:
        matchLabels:
          {{- include "parley.selectorLabels" $sel | nindent 10 }}
  {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

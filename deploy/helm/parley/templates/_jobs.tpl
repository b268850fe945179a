{{/*
Database Jobs: the schema migrations (a Helm pre-install/pre-upgrade hook per schema-owning
component) and kb-svc's tune-search CronJob. Their pods are not the component's pods: they are
labelled app.kubernetes.io/component=<component>-migrate / kb-tune-search, so no Service, PDB,
autoscaler or component NetworkPolicy selects them; their own NetworkPolicy allows DNS and
PostgreSQL only, and nothing in.
*/}}

{{/* <fullname>-<component><suffix>, shortened (parley.shortName) to `max` characters: Job
names become a label value (63); a CronJob's Jobs get an 11-character suffix (52). Args: dict
root, name, suffix, max. */}}
{{- define "parley.jobObjectName" -}}
{{- $n := printf "%s%s" (include "parley.componentName" (dict "root" .root "name" .name)) .suffix -}}
{{- include "parley.shortName" (dict "name" $n "max" .max) -}}
{{- end -}}

{{/* Objects shared by the migration Jobs (ServiceAccount, NetworkPolicy, tenants ConfigMap). */}}
{{- define "parley.migrateName" -}}
{{- printf "%s-migrate" (include "parley.fullname" .) -}}
{{- end -}}

{{/* The enabled components that get a migration Job, as a JSON list. Arg: root. */}}
{{- define "parley.migratingComponents" -}}
{{- $out := list -}}
{{- if .Values.migrations.enabled -}}
{{- range $name := .Values.migrations.components -}}
{{- $c := index $.Values.components $name | default dict -}}
{{- if not $c -}}
{{- fail (printf "migrations.components: no component %q" $name) -}}
{{- end -}}
{{- if $c.enabled -}}
{{- if not (has "postgres" $c.datastores) -}}
{{- fail (printf "migrations.components: %q does not list postgres in its datastores" $name) -}}
{{- end -}}
{{- $out = append $out $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Whether kb's tune-search CronJob is rendered ("true" or ""). Arg: root. */}}
{{- define "parley.tuneSearchEnabled" -}}
{{- $kb := .Values.components.kb | default dict -}}
{{- if and .Values.kbTuneSearch.enabled $kb $kb.enabled -}}
{{- if not (has "postgres" $kb.datastores) -}}
{{- fail "kbTuneSearch: components.kb does not list postgres in its datastores" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* Helm hook annotations of the migration objects. Args: dict weight. Supporting objects run
first (lower weight); every hook object is replaced on the next run and deleted once all hooks
succeeded, so a failed Job stays for `kubectl logs` until the next install/upgrade. */}}
{{- define "parley.migrateHookAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}

{{/* Secrets of a database Job, by reference only: the owner DSN, the app role's DSN (appDsn),
the component's provider keys (kb picks its embedding model by VOYAGE_API_KEY) and secretEnv.
No PARLEY_AUTH_KEYS: the Jobs call no service. Args: dict root, c, appDsn. */}}
{{- define "parley.jobSecretEnv" -}}
{{- $v := .root.Values -}}
- name: MIGRATE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgres.migrateSecretRef.name }}
      key: {{ $v.postgres.migrateSecretRef.key }}
{{- if .appDsn }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgres.secretRef.name }}
      key: {{ $v.postgres.secretRef.key }}
{{- end }}
{{- range $p := .c.providers }}
{{- $pv := index $v.providers $p }}
- name: {{ upper $p }}_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $v.providers.secretName }}
      key: {{ $pv.apiKeyKey }}
      optional: {{ $pv.optional }}
{{- end }}
{{- range $e := .c.secretEnv }}
- name: {{ $e.name }}
  valueFrom:
    secretKeyRef:
      name: {{ $e.secretName }}
      key: {{ $e.key }}
      optional: {{ $e.optional | default false }}
{{- end }}
{{- end -}}

{{/* Pod template of a database Job. Args: dict root, name (component), c, image, label (the
pods' app.kubernetes.io/component), container, args, configMap, serviceAccount,
tenantsConfigMap, appDsn, job (migrations or kbTuneSearch values). */}}
{{- define "parley.jobPodTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := .c -}}
metadata:
  labels:
    {{- include "parley.labels" (dict "root" $root "name" .label) | nindent 4 }}
  {{- with .job.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ .serviceAccount }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  restartPolicy: Never
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
    - name: {{ .container }}
      image: {{ include "parley.imageRef" (dict "root" $root "image" .image) }}
      imagePullPolicy: {{ $v.global.image.pullPolicy }}
      {{- with $c.command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      args:
        {{- toYaml .args | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ .configMap }}
      env:
        {{- include "parley.jobSecretEnv" . | nindent 8 }}
      resources:
        {{- toYaml .job.resources | nindent 8 }}
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
        name: {{ .tenantsConfigMap }}
    {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* NetworkPolicy spec of database Job pods: DNS and PostgreSQL out, nothing in. (The
release's DNS policy also covers them, but a migration hook may run before it exists.)
Args: dict root, labels (their app.kubernetes.io/component values). */}}
{{- define "parley.jobNetworkPolicySpec" -}}
{{- $v := .root.Values -}}
podSelector:
  matchLabels:
    {{- include "parley.instanceSelectorLabels" .root | nindent 4 }}
  matchExpressions:
    - key: app.kubernetes.io/component
      operator: In
      values: {{ toJson .labels }}
policyTypes: [Ingress, Egress]
egress:
  - to:
      - namespaceSelector:
          {{- toYaml $v.networkPolicy.dns.namespaceSelector | nindent 10 }}
        podSelector:
          {{- toYaml $v.networkPolicy.dns.podSelector | nindent 10 }}
    ports:
      - port: 53
        protocol: UDP
      - port: 53
        protocol: TCP
  {{- toYaml $v.postgres.egress | nindent 2 }}
{{- end -}}

{{/*
Naming, labels and the values derived from them. Every object name and every <DEP>_ADDR comes from
parley.componentName, so a Service and the address its callers are given cannot disagree.
*/}}

{{- define "parley.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "parley.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>. Args: dict "root" $ "name" <component key>. Names are capped at 56
characters so "<name>-canary" still fits the 63-character DNS label limit. */}}
{{- define "parley.componentName" -}}
{{- $n := printf "%s-%s" (include "parley.fullname" .root) .name -}}
{{- if gt (len $n) 56 -}}
{{- fail (printf "object name %q is longer than 56 characters: use a shorter release name or fullnameOverride" $n) -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{/* host:port of a component's gRPC port, as given to its callers in <NAME>_ADDR. */}}
{{- define "parley.address" -}}
{{- $c := index .root.Values.components .name -}}
{{- printf "%s:%d" (include "parley.componentName" .) (int $c.ports.grpc) -}}
{{- end -}}

{{- define "parley.addrEnvName" -}}
{{- printf "%s_ADDR" (upper .name | replace "-" "_") -}}
{{- end -}}

{{- define "parley.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of the release. Arg: root. */}}
{{- define "parley.commonLabels" -}}
helm.sh/chart: {{ include "parley.chart" . }}
app.kubernetes.io/name: {{ include "parley.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parley
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
parley.dev/tenancy: {{ .Values.mode }}
{{- if eq .Values.mode "dedicated" }}
parley.dev/tenant: {{ .Values.tenant.id }}
{{- end }}
{{- with .Values.global.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod selector of the whole release. Arg: root. */}}
{{- define "parley.instanceSelectorLabels" -}}
app.kubernetes.io/name: {{ include "parley.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Pod selector of one component (every track). Args: dict root, name. */}}
{{- define "parley.selectorLabels" -}}
{{ include "parley.instanceSelectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Labels of a component's objects. Args: dict root, name. */}}
{{- define "parley.labels" -}}
{{ include "parley.commonLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "parley.tenantsConfigMapName" -}}
{{- .Values.tenantsConfig.existingConfigMap | default (printf "%s-tenants" (include "parley.fullname" .)) -}}
{{- end -}}

{{/* The tenants file (PARLEY_TENANTS_FILE): {tenants: {<id>: config}, plans: {...}}. */}}
{{- define "parley.tenantsFile" -}}
{{- $tenants := deepCopy .Values.tenants -}}
{{- if and (eq .Values.mode "dedicated") (not (hasKey $tenants .Values.tenant.id)) -}}
{{- $_ := set $tenants .Values.tenant.id (dict) -}}
{{- end -}}
{{- toYaml (dict "tenants" $tenants "plans" .Values.plans) -}}
{{- end -}}

{{/* Image reference. Args: dict root, image (repository/tag/digest). */}}
{{- define "parley.imageRef" -}}
{{- $g := .root.Values.global.image -}}
{{- $repo := .image.repository -}}
{{- if $g.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" $g.registry) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default $g.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The canary image of a pair: the stable image with the canary's overrides. Args: dict c. */}}
{{- define "parley.canaryImage" -}}
{{- $img := deepCopy .c.image -}}
{{- $o := .c.canary.pair.image -}}
{{- if $o.repository -}}{{- $_ := set $img "repository" $o.repository -}}{{- end -}}
{{- if or $o.tag $o.digest -}}
{{- $_ := set $img "tag" $o.tag -}}
{{- $_ := set $img "digest" $o.digest -}}
{{- end -}}
{{- toYaml $img -}}
{{- end -}}

{{/* Enabled components that list `name` in dependsOn, as a JSON list. Args: dict root, name. */}}
{{- define "parley.callers" -}}
{{- $callers := list -}}
{{- range $other, $oc := .root.Values.components -}}
{{- if and $oc.enabled (has $.name $oc.dependsOn) -}}
{{- $callers = append $callers $other -}}
{{- end -}}
{{- end -}}
{{- toJson $callers -}}
{{- end -}}

{{/* Seconds a pod needs to stop: preStop sleep + drain + margin. Args: c. */}}
{{- define "parley.terminationGrace" -}}
{{- add (int .preStopSleepSeconds) (int .drainSeconds) (int .terminationMarginSeconds) -}}
{{- end -}}

{{/* Replica split of a stable/canary pair. Args: c. Returns JSON {stable, canary}: the canary
gets ceil(total * weight / 100) of the total (at least one while weight > 0). */}}
{{- define "parley.pairReplicas" -}}
{{- $total := int .replicas -}}
{{- if .autoscaling.enabled -}}{{- $total = int .autoscaling.minReplicas -}}{{- end -}}
{{- $w := int .canary.pair.weight -}}
{{- $canary := 0 -}}
{{- if gt $w 0 -}}
{{- $canary = max 1 (div (add (mul $total $w) 99) 100) | int -}}
{{- end -}}
{{- $stable := max 0 (sub $total $canary) | int -}}
{{- toJson (dict "stable" $stable "canary" $canary) -}}
{{- end -}}

{{/* PromQL label matchers selecting one component's pods (optionally one pod-template hash).
Args: dict root, name, hash (optional). */}}
{{- define "parley.podMatchers" -}}
{{- $n := include "parley.componentName" . -}}
{{- $m := list (printf "namespace=%q" .root.Release.Namespace) -}}
{{- if .hash -}}
{{- $m = append $m (printf "pod=~\"%s-%s-.*\"" $n .hash) -}}
{{- else -}}
{{- $m = append $m (printf "pod=~\"%s-.*\"" $n) -}}
{{- end -}}
{{- with .root.Values.prometheus.extraSelector -}}
{{- $m = append $m . -}}
{{- end -}}
{{- join "," $m -}}
{{- end -}}

{{/* Checks across values that the JSON schema cannot express. Arg: root. */}}
{{- define "parley.validate" -}}
{{- $v := .Values -}}
{{- if eq $v.mode "dedicated" -}}
{{- if not $v.tenant.id -}}
{{- fail "tenant.id is required in dedicated mode (or set mode: pool and list the tenants under `tenants`)" -}}
{{- end -}}
{{- range $id, $_ := $v.tenants -}}
{{- if ne $id $v.tenant.id -}}
{{- fail (printf "tenants.%s: a dedicated release serves only tenant.id %q; use mode: pool for several tenants" $id $v.tenant.id) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- if $v.tenant.id -}}
{{- fail "tenant.id must be empty in pool mode: list the pool's tenants under `tenants`" -}}
{{- end -}}
{{- end -}}
{{- if and $v.monitoring.serviceMonitor.enabled $v.monitoring.podMonitor.enabled -}}
{{- fail "enable monitoring.serviceMonitor or monitoring.podMonitor, not both (every target would be scraped twice)" -}}
{{- end -}}
{{- if and (not $v.redis.url) (not $v.redis.secretRef.name) -}}
{{- fail "redis: set url or secretRef.name" -}}
{{- end -}}
{{- range $name, $c := $v.components -}}
{{- if $c.enabled -}}
{{- range $pname, $_ := $c.portEnv -}}
{{- if not (hasKey $c.ports $pname) -}}
{{- fail (printf "components.%s.portEnv.%s: no such port" $name $pname) -}}
{{- end -}}
{{- end -}}
{{- if not (hasKey $c.ports $c.probe.port) -}}
{{- fail (printf "components.%s.probe.port %q is not one of its ports" $name $c.probe.port) -}}
{{- end -}}
{{- range $dep := $c.dependsOn -}}
{{- $dc := index $v.components $dep | default dict -}}
{{- if not $dc -}}
{{- fail (printf "components.%s.dependsOn: no component %q" $name $dep) -}}
{{- end -}}
{{- if not $dc.enabled -}}
{{- fail (printf "components.%s depends on %q, which is disabled" $name $dep) -}}
{{- end -}}
{{- if not $dc.ports.grpc -}}
{{- fail (printf "components.%s depends on %q, which has no gRPC port" $name $dep) -}}
{{- end -}}
{{- end -}}
{{- if has $name $c.dependsOn -}}
{{- fail (printf "components.%s depends on itself" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

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
{{- /* Helm accepts dots in release names; Service names (DNS labels) do not. */ -}}
{{- $release := .Release.Name | replace "." "-" -}}
{{- if contains $name $release -}}
{{- $release | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" $release $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A name cut to at most `max` characters. A longer one keeps its first max-9 characters and
gets "-" and 8 hex digits of its SHA-256, so every release name Helm accepts renders, two long
names that share a prefix stay distinct, and a name that fits is never changed (an upgrade
does not rename objects). Args: dict "name" "max". */}}
{{- define "parley.shortName" -}}
{{- if gt (len .name) (int .max) -}}
{{- printf "%s-%s" (trunc (sub (int .max) 9 | int) .name | trimSuffix "-") (sha256sum .name | trunc 8) -}}
{{- else -}}
{{- .name -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>. Args: dict "root" $ "name" <component key>. Names are capped at 56
characters so "<name>-canary" still fits the 63-character DNS label limit; a longer one is
shortened (parley.shortName) to 55, because at exactly 56 the API server cuts a canary pod's
generated name to "<name>-c" + 5 random characters, which no query can tell from a stable pod's
(see parley.podMatchers). */}}
{{- define "parley.componentName" -}}
{{- $n := printf "%s-%s" (include "parley.fullname" .root) .name -}}
{{- if gt (len $n) 56 -}}
{{- include "parley.shortName" (dict "name" $n "max" 55) -}}
{{- else -}}
{{- $n -}}
{{- end -}}
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

{{/* The LiveKit agent name the workers register under (PARLEY_AGENT_NAME), which room
dispatches must name: livekit.agentName, else <fullname>.<namespace>, unique per cluster, so
releases sharing a LiveKit server never receive each other's jobs. Arg: root. */}}
{{- define "parley.agentName" -}}
{{- .Values.livekit.agentName | default (printf "%s.%s" (include "parley.fullname" .) .Release.Namespace) -}}
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
gets ceil(total * weight / 100) of the total, but while 0 < weight < 100 each track keeps at
least one pod: a small canary must never take the last stable pod (a "10 %" canary of one
replica would otherwise serve everything). So the split is coarse with few replicas (10 % of 2
is 1 of 2); parley.validate refuses a total below 2 for such a weight. */}}
{{- define "parley.pairReplicas" -}}
{{- $total := int .replicas -}}
{{- if .autoscaling.enabled -}}{{- $total = int .autoscaling.minReplicas -}}{{- end -}}
{{- $w := int .canary.pair.weight -}}
{{- $canary := 0 -}}
{{- if ge $w 100 -}}
{{- $canary = $total -}}
{{- else if gt $w 0 -}}
{{- $canary = min (sub $total 1) (max 1 (div (add (mul $total $w) 99) 100)) | int -}}
{{- end -}}
{{- $stable := max 0 (sub $total $canary) | int -}}
{{- toJson (dict "stable" $stable "canary" $canary) -}}
{{- end -}}

{{/* The image a component's schema migration runs: the canary's while a pair canary names a
different image than the stable track (whatever its weight), else the stable one. The newest
code must migrate before its pods start (new pods never meet an old schema), so the stable pods
then run against the canary's schema: migrations must stay backward compatible. Weight 0 (an
abort) keeps the canary image: the schema stays migrated (an older build's migrate leaves a
newer schema as it is). Args: dict root, c. Returns the image (repository/tag/digest) as
YAML. */}}
{{- define "parley.migrationImage" -}}
{{- $c := .c -}}
{{- $img := $c.image -}}
{{- if eq $c.canary.strategy "pair" -}}
{{- $canary := include "parley.canaryImage" (dict "c" $c) | fromYaml -}}
{{- if ne (include "parley.imageRef" (dict "root" .root "image" $canary)) (include "parley.imageRef" (dict "root" .root "image" $c.image)) -}}
{{- $img = $canary -}}
{{- end -}}
{{- end -}}
{{- toYaml $img -}}
{{- end -}}

{{/* PromQL label matchers selecting one component's pods (optionally one pod-template hash).
Without a hash: the pods of the Deployment/Rollout named <name> only. Their names are
<name>-<pod-template-hash>-<5 random> (cut to 63 by the API server), both parts drawn from
Kubernetes' vowel-free alphabet, so the pattern cannot match <name>-canary-... (a pair's canary
track, which the stable track's autoscaler must not count) nor <name>-migrate-... and
<name>-tune-search-... (Job pods). Args: dict root, name, hash (optional). */}}
{{- define "parley.podMatchers" -}}
{{- $n := include "parley.componentName" . -}}
{{- $m := list (printf "namespace=%q" .root.Release.Namespace) -}}
{{- if .hash -}}
{{- $m = append $m (printf "pod=~\"%s-%s-.*\"" $n .hash) -}}
{{- else -}}
{{- $m = append $m (printf "pod=~\"%s-[bcdfghjklmnpqrstvwxz2456789-]+\"" $n) -}}
{{- end -}}
{{- with .root.Values.prometheus.extraSelector -}}
{{- $m = append $m . -}}
{{- end -}}
{{- join "," $m -}}
{{- end -}}

{{/* A byte quantity ("64Mi", "1Gi", "500M", 1048576) as an integer. Args: dict "q" "what"
(the value's path, for the error). */}}
{{- define "parley.bytes" -}}
{{- $q := toString .q -}}
{{- if kindIs "float64" .q -}}{{- $q = printf "%.0f" .q -}}{{- end -}}
{{- $units := list (list "Ki" 1024.0) (list "Mi" 1048576.0) (list "Gi" 1073741824.0) (list "Ti" 1099511627776.0) (list "Pi" 1125899906842624.0) (list "k" 1000.0) (list "M" 1000000.0) (list "G" 1000000000.0) (list "T" 1000000000000.0) (list "P" 1000000000000000.0) -}}
{{- $mult := 1.0 -}}
{{- range $u := $units -}}
{{- if and (eq $mult 1.0) (hasSuffix (first $u) $q) -}}
{{- $q = trimSuffix (first $u) $q -}}
{{- $mult = last $u -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?$" $q) -}}
{{- fail (printf "%s: %v is not a byte quantity: give it like 64Mi or 1Gi" .what .q) -}}
{{- end -}}
{{- printf "%.0f" (floor (mulf (float64 $q) $mult)) -}}
{{- end -}}

{{/* PARLEY_USAGE_SPOOL_MAX_BYTES of a component: usageSpool.maxBytes, or its share of /tmp
(tmpSizeLimit * tmpPercent / 100) split between the processes that spool at once. "" for a
component that records no usage (no billing in dependsOn: the runtime spools only with a
BILLING_ADDR). Args: dict root, name, c. */}}
{{- define "parley.usageSpoolMaxBytes" -}}
{{- $c := .c -}}
{{- $s := $c.usageSpool -}}
{{- if has "billing" $c.dependsOn -}}
{{- if gt (int64 $s.maxBytes) 0 -}}
{{- printf "%d" (int64 $s.maxBytes) -}}
{{- else -}}
{{- $procs := int $s.processes -}}
{{- with $s.processesEnv -}}
{{- $env := merge (deepCopy $c.env) $.root.Values.global.env -}}
{{- if hasKey $env . -}}{{- $procs = int (index $env .) -}}{{- end -}}
{{- end -}}
{{- $tmp := include "parley.bytes" (dict "q" $c.tmpSizeLimit "what" (printf "components.%s.tmpSizeLimit" .name)) | float64 -}}
{{- $cap := floor (divf (mulf $tmp (float64 $s.tmpPercent)) (mulf 100.0 (float64 (max 1 $procs)))) -}}
{{- if lt $cap 1048576.0 -}}
{{- fail (printf "components.%s: the usage spool gets %.0f bytes per process (tmpSizeLimit %v x usageSpool.tmpPercent %v %% / %d processes), under 1Mi: raise tmpSizeLimit or usageSpool.tmpPercent, or set usageSpool.maxBytes" .name $cap $c.tmpSizeLimit $s.tmpPercent $procs) -}}
{{- end -}}
{{- printf "%.0f" $cap -}}
{{- end -}}
{{- end -}}
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
{{- if and $v.otel.endpoint $v.networkPolicy.enabled (not $v.otel.egress) -}}
{{- fail "otel.endpoint is set but otel.egress is empty: the NetworkPolicies would drop every export; add an egress rule to the collector under otel.egress (like postgres.egress), or clear otel.endpoint" -}}
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
{{- if eq $c.canary.strategy "pair" -}}
{{- $w := int $c.canary.pair.weight -}}
{{- $total := ternary (int $c.autoscaling.minReplicas) (int $c.replicas) $c.autoscaling.enabled -}}
{{- if and (gt $w 0) (lt $w 100) (lt $total 2) -}}
{{- fail (printf "components.%s.canary.pair.weight %d needs at least 2 replicas (one per track) but the pair has %d: raise %s to 2 or more, or set weight to 0 or 100" $name $w $total (ternary "autoscaling.minReplicas" "replicas" $c.autoscaling.enabled)) -}}
{{- end -}}
{{- $cn := include "parley.componentName" (dict "root" $ "name" $name) -}}
{{- if and $c.autoscaling.enabled (eq $c.autoscaling.engine "keda") (eq (len $cn) 56) -}}
{{- fail (printf "components.%s: %q is 56 characters long, so the API server cuts the canary pods' names to %q + 5 random characters and the KEDA query cannot tell them from the stable pods: use a release name (or fullnameOverride) one character shorter" $name $cn (printf "%s-c" $cn)) -}}
{{- end -}}
{{- end -}}
{{- $_ := include "parley.usageSpoolMaxBytes" (dict "name" $name "c" $c "root" $) -}}
{{- end -}}
{{- end -}}
{{- end -}}

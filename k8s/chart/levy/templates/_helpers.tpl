{{/* The release's base name: the release name when it already says levy. */}}
{{- define "levy.fullname" -}}
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

{{- define "levy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "levy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "levy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "levy.labels" -}}
{{ include "levy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "levy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "levy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The levy Service's in-cluster name, as Envoy and Istio reach it. */}}
{{- define "levy.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "levy.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/*
levy.yaml: files/levy.yaml as it is, or with .Values.config (and what the chart's own
values need in the file) merged over it.
*/}}
{{- define "levy.config" -}}
{{- $overrides := deepCopy (.Values.config | default dict) -}}
{{- if .Values.secrets.keyHashSecret.existingSecret -}}
{{- $keys := get $overrides "keys" | default dict -}}
{{- $_ := set $keys "hash_secret" "env:LEVY_KEY_HASH_SECRET" -}}
{{- $_ := set $overrides "keys" $keys -}}
{{- end -}}
{{- with .Values.tls.existingSecret -}}
{{- $listen := get $overrides "listen" | default dict -}}
{{- $tls := dict "cert_file" "/etc/levy-tls/tls.crt" "key_file" "/etc/levy-tls/tls.key" -}}
{{- if $.Values.tls.clientCA -}}
{{- $_ := set $tls "client_ca_file" "/etc/levy-tls/ca.crt" -}}
{{- end -}}
{{- $_ := set $listen "tls" $tls -}}
{{- $_ := set $overrides "listen" $listen -}}
{{- end -}}
{{- if $overrides -}}
{{- mergeOverwrite (.Files.Get "files/levy.yaml" | fromYaml) $overrides | toYaml -}}
{{- else -}}
{{- .Files.Get "files/levy.yaml" -}}
{{- end -}}
{{- end -}}

{{/*
GOMEMLIMIT in bytes: goMemLimitPercent of resources.limits.memory, a Kubernetes quantity
(plain bytes, or a suffix Ki Mi Gi Ti k M G T; decimals allowed). Empty without a limit.
*/}}
{{- define "levy.goMemLimit" -}}
{{- $limit := dig "limits" "memory" "" .Values.resources | toString -}}
{{- if $limit -}}
{{- $m := regexFind "^[0-9]+(\\.[0-9]+)?" $limit -}}
{{- $suffix := trimPrefix $m $limit -}}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $m) (not (hasKey $units $suffix)) -}}
{{- fail (printf "resources.limits.memory %q: want a number with an optional suffix Ki, Mi, Gi, Ti, k, M, G or T" $limit) -}}
{{- end -}}
{{- $pct := .Values.goMemLimitPercent | int -}}
{{- if or (lt $pct 1) (gt $pct 100) -}}
{{- fail (printf "goMemLimitPercent %d: want 1 to 100" $pct) -}}
{{- end -}}
{{- divf (mulf (float64 $m) (get $units $suffix) $pct) 100 | floor | int64 -}}
{{- end -}}
{{- end -}}

{{/* A secretKeyRef env var from (list NAME {existingSecret, key}); empty without existingSecret. */}}
{{- define "levy.secretEnv" -}}
{{- $ref := index . 1 -}}
{{- if $ref.existingSecret -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.existingSecret }}
      key: {{ required (printf "the key of Secret %s" $ref.existingSecret) $ref.key }}
{{- end -}}
{{- end -}}

{{/* Checks of values that would otherwise deploy something that cannot work. */}}
{{- define "levy.validate" -}}
{{- $s := .Values.store -}}
{{- if not (has $s.type (list "redis" "local")) -}}
{{- fail (printf "store.type %q: want redis or local" $s.type) -}}
{{- end -}}
{{- if not (has $s.onStoreError (list "deny" "allow")) -}}
{{- fail (printf "store.onStoreError %q: want deny or allow" $s.onStoreError) -}}
{{- end -}}
{{- if eq $s.type "redis" -}}
{{- if and (not $s.redis.addr) (not $s.redis.cluster) -}}
{{- fail "store.type redis: set store.redis.addr (host:port) or store.redis.cluster (seed nodes)" -}}
{{- end -}}
{{- else -}}
{{- if .Values.autoscaling.enabled -}}
{{- fail "store.type local runs one replica (one process per data file): autoscaling needs store.type redis" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.minReplicas) 2) -}}
{{- fail "autoscaling.minReplicas: at least 2, so one replica survives a drain" -}}
{{- end -}}
{{- end -}}

{{/* The mesh config's extension providers for this release, for NOTES and the docs. */}}
{{- define "levy.meshConfig" -}}
{{- $host := include "levy.serviceHost" . -}}
meshConfig:
  extensionProviders:
  - name: {{ .Values.istio.authzProvider }}
    envoyExtAuthzGrpc:
      service: {{ $host }}
      port: {{ .Values.ports.grpc }}
      timeout: 0.25s
      failOpen: false
      statusOnError: "503"
  - name: {{ .Values.istio.alsProvider }}
    envoyHttpAls:
      service: {{ $host }}
      port: {{ .Values.ports.grpc }}
      logName: levy
      additionalRequestHeadersToLog: [x-consumer-id, x-request-id]
      additionalResponseHeadersToLog: [x-levy-units]
{{- end -}}

{{/* A probe from values, over HTTPS when levy's listeners serve TLS. */}}
{{- define "levy.probe" -}}
{{- $probe := deepCopy (index . 1) -}}
{{- if and (index . 0).Values.tls.existingSecret $probe.httpGet -}}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}

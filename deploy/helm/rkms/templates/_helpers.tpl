{{/* Names and labels. */}}

{{- define "rkms.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rkms.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rkms.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rkms.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rkms.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rkms.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rkms.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rkms.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rkms.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "rkms.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* Where the pod finds its files; config.toml names the same paths. */}}
{{- define "rkms.paths" -}}
config: /etc/rkms/config.toml
dataDir: /var/lib/rkms
tls: /etc/rkms/tls
clientCa: /etc/rkms/client-ca
{{- end }}

{{/*
Checks across values that the schema cannot express, so that a configuration the server
would refuse fails at render rather than in a crash-looping pod. The server checks the rest
at start (and `rkms-server check-config` before).
*/}}
{{- define "rkms.validate" -}}
{{- $v := .Values }}
{{- if and (not $v.tls.enabled) (not $v.server.allow_insecure_http) }}
{{- fail "tls.enabled is false but server.allow_insecure_http is not true: the server refuses plain HTTP beyond loopback. Enable TLS, or set server.allow_insecure_http = true when a TLS-terminating proxy or mesh is the only way in" }}
{{- end }}
{{- if eq (int64 $v.server.port) (int64 $v.server.health_port) }}
{{- fail "server.health_port must differ from server.port: the health port is a listener of its own" }}
{{- end }}
{{- $regions := $v.kms.regions }}
{{- range $region := $regions }}
{{- if not (get $v.kms.key_ids $region) }}
{{- fail (printf "kms.key_ids has no master key for region %q (each region in kms.regions needs one)" $region) }}
{{- end }}
{{- end }}
{{- if and $v.kms.min_regions (gt (int64 $v.kms.min_regions) (len $regions)) }}
{{- fail (printf "kms.min_regions is %d, more than the %d region(s) in kms.regions" (int64 $v.kms.min_regions) (len $regions)) }}
{{- end }}
{{- $names := list }}
{{- range $p := $v.principals }}
{{- if has $p.name $names }}
{{- fail (printf "principals: the name %q is used twice" $p.name) }}
{{- end }}
{{- $names = append $names $p.name }}
{{- if and $p.client_certificate_names (not (and $v.tls.enabled $v.tls.clientCaSecretName)) }}
{{- fail (printf "principals: %q has client_certificate_names, which need tls.enabled and tls.clientCaSecretName to verify certificates" $p.name) }}
{{- end }}
{{- end }}
{{- if and (eq $v.store.backend "postgres") (or (regexMatch "^[^:/]+://[^/@]*:[^/@]*@" $v.store.postgres.url) (regexMatch "(?i)[?&]password=" $v.store.postgres.url)) }}
{{- fail "store.postgres.url holds a password, which the ConfigMap would show to whoever can read it: remove it from the URL and name a Secret in store.postgres.passwordSecret" }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (not $v.serviceMonitor.bearerTokenSecret.name) }}
{{- fail "serviceMonitor.bearerTokenSecret.name is required: /metrics answers only a principal with metrics = true" }}
{{- end }}
{{- end }}

{{/*
One TOML value: a string, boolean, integer, list or inline table. Helm reads every number
in values as a float, so integers are written back as integers (the schema admits integers
only where the server wants them). JSON's string escapes are all valid in TOML.
*/}}
{{- define "rkms.toml.value" -}}
{{- $kind := kindOf . }}
{{- if eq $kind "string" }}
{{- toJson . }}
{{- else if eq $kind "bool" }}
{{- ternary "true" "false" . }}
{{- else if has $kind (list "float64" "float32" "int" "int64" "int32" "uint64") }}
{{- int64 . }}
{{- else if eq $kind "slice" }}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (include "rkms.toml.value" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if eq $kind "map" }}
{{- $map := . }}
{{- $pairs := list }}
{{- range $key := keys $map | sortAlpha }}
{{- $pairs = append $pairs (printf "%s = %s" (toJson $key) (include "rkms.toml.value" (get $map $key))) }}
{{- end }}
{{- printf "{ %s }" (join ", " $pairs) }}
{{- else }}
{{- fail (printf "cannot write %v (%s) in config.toml" . $kind) }}
{{- end }}
{{- end }}

{{/*
A section's keys, one `key = value` line each, the keys in "first" first and the rest in
sorted order, leaving out null values and the keys in "omit" (the chart's own wiring).
*/}}
{{- define "rkms.toml.keys" -}}
{{- $values := .values }}
{{- $omit := .omit | default list }}
{{- $first := .first | default list }}
{{- $rest := list }}
{{- range $key := keys $values | sortAlpha }}
{{- if not (has $key $first) }}
{{- $rest = append $rest $key }}
{{- end }}
{{- end }}
{{- $lines := list }}
{{- range $key := concat $first $rest }}
{{- $value := get $values $key }}
{{- if and (hasKey $values $key) (not (has $key $omit)) (not (kindIs "invalid" $value)) }}
{{- $lines = append $lines (printf "%s = %s" $key (include "rkms.toml.value" $value)) }}
{{- end }}
{{- end }}
{{- join "\n" $lines }}
{{- end }}

{{/* A [section] after a blank line, with its keys; nothing when it has none. */}}
{{- define "rkms.toml.section" -}}
{{- $body := include "rkms.toml.keys" . }}
{{- if $body }}
{{- printf "\n[%s]\n%s" .name $body }}
{{- end }}
{{- end }}

{{/*
config.toml, from the values that mirror the server's configuration file (README.md,
"Configuration"). Paths are the pod's mounts (rkms.paths).
*/}}
{{- define "rkms.config" -}}
{{- $paths := include "rkms.paths" . | fromYaml }}
{{- $v := .Values -}}
# rkms-server's configuration, rendered by the {{ .Chart.Name }} chart from the release's values.
{{ include "rkms.toml.section" (dict "name" "server" "values" $v.server) }}
{{- if $v.tls.enabled }}

[server.tls]
certificate = {{ printf "%s/tls.crt" $paths.tls | toJson }}
private_key = {{ printf "%s/tls.key" $paths.tls | toJson }}
{{- if $v.tls.clientCaSecretName }}
client_ca = {{ printf "%s/%s" $paths.clientCa $v.tls.clientCaKey | toJson }}
{{- end }}
reload_interval_seconds = {{ include "rkms.toml.value" $v.tls.reload_interval_seconds }}
{{- end }}
{{ include "rkms.toml.section" (dict "name" "logger" "values" $v.logger) }}
{{- /* Helm merges key_ids with the defaults' entries; only the listed regions' go in. */}}
{{- $kms := deepCopy $v.kms }}
{{- $keyIds := dict }}
{{- range $region := $v.kms.regions }}
{{- $_ := set $keyIds $region (get $v.kms.key_ids $region) }}
{{- end }}
{{- $_ := set $kms "key_ids" $keyIds }}
{{ include "rkms.toml.section" (dict "name" "kms" "values" $kms "first" (list "provider" "regions")) }}

[store]
backend = {{ toJson $v.store.backend }}
{{- with include "rkms.toml.keys" (dict "values" (get $v.store $v.store.backend) "omit" (list "passwordSecret")) }}
{{ . }}
{{- end }}
{{- range $name := list "cache" "repair" "lifecycle" "limits" "audit" }}
{{- with include "rkms.toml.section" (dict "name" $name "values" (get $v $name)) }}
{{ . }}
{{- end }}
{{- end }}
{{- range $v.principals }}

[[principals]]
{{ include "rkms.toml.keys" (dict "values" . "first" (list "name")) }}
{{- end }}
{{- end }}

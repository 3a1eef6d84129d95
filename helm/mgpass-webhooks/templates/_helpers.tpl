{{/* Names, labels and the shared pieces of every pod of the chart. */}}

{{- define "mgpass-webhooks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mgpass-webhooks.fullname" -}}
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

{{- define "mgpass-webhooks.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mgpass-webhooks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mgpass-webhooks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mgpass-webhooks.labels" -}}
helm.sh/chart: {{ include "mgpass-webhooks.chart" . }}
{{ include "mgpass-webhooks.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mgpass-webhooks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mgpass-webhooks.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mgpass-webhooks.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The admin server's port, from config.admin.listen ("0.0.0.0:9464" -> 9464). */}}
{{- define "mgpass-webhooks.adminPort" -}}
{{- $listen := .Values.config.admin.listen | toString }}
{{- if not (regexMatch "^(\\[[0-9a-fA-F:.]+\\]|[0-9.]+):[0-9]+$" $listen) }}
{{- fail (printf "config.admin.listen: %q is not an address such as 0.0.0.0:9464" $listen) }}
{{- end }}
{{- regexReplaceAll "^.*:" $listen "" }}
{{- end }}

{{- define "mgpass-webhooks.configPath" -}}/etc/mgpass-webhooks/config.toml{{- end }}

{{/* One TOML value: strings as JSON strings (valid TOML basic strings), integers, booleans. */}}
{{- define "mgpass-webhooks.tomlValue" -}}
{{- $v := .value }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) }}
{{- if ne (float64 $v) (float64 (int64 $v)) }}{{ fail (printf "config.%s: %v is not an integer" .key $v) }}{{ end }}
{{- int64 $v }}
{{- else }}{{ fail (printf "config.%s: unsupported value %v" .key $v) }}
{{- end }}
{{- end }}

{{/* config.toml, rendered from .Values.config; null settings are left to the built-in defaults. */}}
{{- define "mgpass-webhooks.configToml" -}}
# Rendered by the mgpass-webhooks Helm chart from .Values.config; read with --config.
{{- range $section, $settings := .Values.config }}

[{{ $section }}]
{{- range $key, $value := $settings }}
{{- if and (ne $key "properties") (not (kindIs "invalid" $value)) }}
{{ $key }} = {{ include "mgpass-webhooks.tomlValue" (dict "key" (printf "%s.%s" $section $key) "value" $value) }}
{{- end }}
{{- end }}
{{- if and (eq $section "kafka") $settings.properties }}

[kafka.properties]
{{- range $k, $v := $settings.properties }}
{{ toJson $k }} = {{ toJson (toString $v) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether the chart creates its own credentials Secret. */}}
{{- define "mgpass-webhooks.createSecret" -}}
{{- $a := .Values.auth }}
{{- if and (not $a.existingSecret) (or $a.sasl.username $a.sasl.password $a.registry.username $a.registry.password) }}true{{ end }}
{{- end }}

{{- define "mgpass-webhooks.secretName" -}}
{{- default (include "mgpass-webhooks.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/* The Secret's data: only the credentials that are set. */}}
{{- define "mgpass-webhooks.secretData" -}}
{{- with .Values.auth.sasl.username }}
sasl-username: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.auth.sasl.password }}
sasl-password: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.auth.registry.username }}
registry-username: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.auth.registry.password }}
registry-password: {{ . | b64enc | quote }}
{{- end }}
{{- end }}

{{/*
Credential environment variables from a Secret (name in .secret). Every reference is optional,
so an existing Secret needs only the keys it uses.
*/}}
{{- define "mgpass-webhooks.authEnv" -}}
{{- $secret := .secret }}
{{- range $env, $key := dict "MGPASS_KAFKA_PROP_SASL_USERNAME" "sasl-username" "MGPASS_KAFKA_PROP_SASL_PASSWORD" "sasl-password" "MGPASS_REGISTRY__USERNAME" "registry-username" "MGPASS_REGISTRY__PASSWORD" "registry-password" }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}

{{/* Whether the pods get credentials at all. */}}
{{- define "mgpass-webhooks.hasAuth" -}}
{{- if or .Values.auth.existingSecret (include "mgpass-webhooks.createSecret" .) }}true{{ end }}
{{- end }}

{{/* The restricted container securityContext, shared by every container of the chart. */}}
{{- define "mgpass-webhooks.securityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{- define "mgpass-webhooks.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/* The console's Secret (its config.toml, and the session key when given in values). */}}
{{- define "mgpass-webhooks.consoleName" -}}
{{- printf "%s-console" (include "mgpass-webhooks.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The console's config.toml: the release's config plus the [console] section and accounts. */}}
{{- define "mgpass-webhooks.consoleToml" -}}
{{- $c := .Values.console }}
{{- if and (eq $c.auth "accounts") (not $c.accounts) }}
{{- fail "console.accounts: console.auth is accounts but no account is given (hash a password with `mgpass-webhooks console hash-password`)" }}
{{- end }}
{{- if and (eq $c.auth "proxy") (not $c.proxy.trusted) }}
{{- fail "console.proxy.trusted: console.auth is proxy but no trusted proxy address is given" }}
{{- end }}
{{- if and (gt (int $c.replicas) 1) (not $c.sessionKey) (not $c.existingSecret) }}
{{- fail "console.sessionKey: more than one console replica needs a shared session key (console.sessionKey or console.existingSecret)" }}
{{- end }}
{{- include "mgpass-webhooks.configToml" . }}

[console]
listen = {{ printf "0.0.0.0:%d" (int $c.port) | toJson }}
auth = {{ $c.auth | toJson }}
proxy_user_header = {{ $c.proxy.userHeader | toJson }}
proxy_admins = {{ $c.proxy.admins | default list | toJson }}
proxy_trusted = {{ $c.proxy.trusted | default list | toJson }}
session_ttl_secs = {{ int64 $c.sessionTtlSecs }}
cookie_secure = {{ $c.cookieSecure }}
login_attempts_per_minute = {{ int64 $c.loginAttemptsPerMinute }}
deliveries_lookback_secs = {{ int64 $c.deliveriesLookbackSecs }}
{{- range $c.accounts }}

[[console.accounts]]
username = {{ .username | toJson }}
password_hash = {{ .passwordHash | toJson }}
role = {{ .role | toJson }}
{{- end }}
{{- end }}

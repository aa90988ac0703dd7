{{/* The release-prefixed base name of every object. */}}
{{- define "modelcast.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 53 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelcast.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "modelcast.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelcast.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The plugin's socket directory on the host, as the kubelet sees it. */}}
{{- define "modelcast.pluginDir" -}}
{{ trimSuffix "/" .Values.kubeletDir }}/plugins/{{ .Values.driverName }}
{{- end -}}

{{- define "modelcast.ossSecret" -}}
{{- if .Values.oss.existingSecret -}}
{{ .Values.oss.existingSecret }}
{{- else if .Values.oss.accessKeyId -}}
{{ include "modelcast.fullname" . }}-oss
{{- end -}}
{{- end -}}

{{/* The Secret holding the Redis password, and its key; empty when there is none. */}}
{{- define "modelcast.redisSecret" -}}
{{- if eq .Values.redis.mode "bundled" -}}
{{ include "modelcast.fullname" . }}-redis
{{- else if eq .Values.redis.mode "external" -}}
{{ .Values.redis.external.existingSecret }}
{{- end -}}
{{- end -}}

{{- define "modelcast.redisSecretKey" -}}
{{- if eq .Values.redis.mode "bundled" -}}password{{- else -}}{{ .Values.redis.external.passwordKey }}{{- end -}}
{{- end -}}

{{/* config.json: the values' config with the Redis connection filled in. */}}
{{- define "modelcast.config" -}}
{{- $c := deepCopy .Values.config -}}
{{- $db := dict -}}
{{- if eq .Values.redis.mode "bundled" -}}
{{- $db = dict "host" (printf "%s-redis.%s.svc" (include "modelcast.fullname" .) .Release.Namespace) "port" 6379 "username" .Values.redis.bundled.username -}}
{{- else if eq .Values.redis.mode "external" -}}
{{- $db = dict "host" .Values.redis.external.host "port" .Values.redis.external.port "username" .Values.redis.external.username "tls" .Values.redis.external.tls -}}
{{- with .Values.redis.external.tlsSecret -}}
{{- $_ := set $db "tls" true -}}
{{- $_ := set $db "caFile" "/etc/modelcast-redis-tls/ca.crt" -}}
{{- if $.Values.redis.external.clientCertificate -}}
{{- $_ := set $db "certFile" "/etc/modelcast-redis-tls/tls.crt" -}}
{{- $_ := set $db "keyFile" "/etc/modelcast-redis-tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- $_ := set $c.broadcast "enableBroadcast" false -}}
{{- end -}}
{{- $_ := set $c.broadcast "db" $db -}}
{{- toPrettyJson $c -}}
{{- end -}}

{{/* Environment both plugin modes share: OSS defaults and credentials, the Redis password. */}}
{{- define "modelcast.env" -}}
{{- if .Values.oss.endpoint }}
- name: OSS_ENDPOINT
  value: {{ .Values.oss.endpoint | quote }}
{{- end }}
{{- if .Values.oss.region }}
- name: OSS_REGION
  value: {{ .Values.oss.region | quote }}
{{- end }}
{{- with include "modelcast.ossSecret" . }}
- name: OSS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: akId}
- name: OSS_ACCESS_KEY_SECRET
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: akSecret}
- name: OSS_SESSION_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: securityToken, optional: true}
{{- end }}
{{- with include "modelcast.redisSecret" . }}
- name: MODELCAST_REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ include "modelcast.redisSecretKey" $ }}}
{{- end }}
{{- end -}}

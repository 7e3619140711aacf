{{/* Cross-field checks values.schema.json cannot express; rendered by NOTES.txt. */}}
{{- define "edumind.validate" -}}
{{- $defaults := 0 -}}
{{- $names := dict -}}
{{- range .Values.targetServers -}}
{{- if .default }}{{ $defaults = add1 $defaults }}{{ end -}}
{{- if hasKey $names .name }}{{ fail (printf "targetServers: %q is listed twice" .name) }}{{ end -}}
{{- $_ := set $names .name true -}}
{{- end -}}
{{- if not (or (eq $defaults 1) (and (eq (len .Values.targetServers) 1) (eq $defaults 0))) -}}
{{- fail (printf "targetServers: exactly one server must have default: true (found %d)" $defaults) -}}
{{- end -}}
{{- with .Values.selfService.server -}}
{{- if not (hasKey $names .) }}{{ fail (printf "selfService.server %q is not in targetServers" .) }}{{ end -}}
{{- end -}}
{{- if and (eq .Values.backup.storage.type "s3") (not .Values.backup.storage.s3.bucket) -}}
{{- fail "backup.storage.s3.bucket is required when backup.storage.type is s3" -}}
{{- end -}}
{{- if and (eq .Values.backup.storage.type "azure") (not (and .Values.backup.storage.azure.account .Values.backup.storage.azure.container)) -}}
{{- fail "backup.storage.azure.account and container are required when backup.storage.type is azure" -}}
{{- end -}}
{{- $rtls := .Values.dataplane.redis.tls -}}
{{- if and $rtls.caSecret $rtls.caConfigMap -}}
{{- fail "dataplane.redis.tls: set caSecret or caConfigMap, not both" -}}
{{- end -}}
{{- if and .Values.dataplane.redis.url (or $rtls.caSecret $rtls.caConfigMap) (not (hasPrefix "rediss://" .Values.dataplane.redis.url)) -}}
{{- fail "dataplane.redis.tls: a CA is set but dataplane.redis.url is not rediss://" -}}
{{- end -}}
{{- with .Values.dataplane.auth.hs256.value -}}
{{- if lt (len .) 32 }}{{ fail "dataplane.auth.hs256.value must be at least 32 bytes" }}{{ end -}}
{{- end -}}
{{- range $k := list "shutdown_drain_secs" "shutdown_grace_secs" -}}
{{- if hasKey $.Values.dataplane.extraConfig $k }}{{ fail (printf "dataplane.extraConfig.%s: set dataplane.shutdown instead" $k) }}{{ end -}}
{{- end -}}
{{- if eq (int .Values.dataplane.port) (int .Values.dataplane.adminPort) -}}
{{- fail "dataplane.adminPort must differ from dataplane.port" -}}
{{- end -}}
{{- range $k := list "listen" "admin_listen" -}}
{{- if hasKey $.Values.dataplane.extraConfig $k }}{{ fail (printf "dataplane.extraConfig.%s: set dataplane.port / dataplane.adminPort instead" $k) }}{{ end -}}
{{- end -}}
{{- if and .Values.dataplane.autoscaling.enabled (gt (int .Values.dataplane.autoscaling.minReplicas) (int .Values.dataplane.autoscaling.maxReplicas)) -}}
{{- fail "dataplane.autoscaling.minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- end -}}

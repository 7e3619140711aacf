{{/* Names, labels and the small pieces every template shares. */}}

{{- define "edumind.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "edumind.fullname" -}}
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

{{- define "edumind.operator.fullname" -}}
{{- printf "%s-operator" (include "edumind.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "edumind.dataplane.fullname" -}}
{{- printf "%s-dataplane" (include "edumind.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "edumind.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "edumind.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edumind
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "operator"). */}}
{{- define "edumind.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edumind.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "edumind.componentLabels" -}}
{{ include "edumind.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "edumind.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "edumind.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "edumind.dataplane.serviceAccountName" -}}
{{- if .Values.dataplane.serviceAccount.create -}}
{{- default (include "edumind.dataplane.fullname" .) .Values.dataplane.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.dataplane.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image reference: include with (dict "ctx" $ "image" .Values.operator.image) */}}
{{- define "edumind.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Name of the admin Secret of a target server: include with (dict "ctx" $ "server" $s). */}}
{{- define "edumind.adminSecretName" -}}
{{- with dig "admin" "existingSecret" "" .server -}}
{{- . -}}
{{- else -}}
{{- printf "%s-pg-%s-admin" (include "edumind.fullname" .ctx) .server.name | trunc 253 -}}
{{- end -}}
{{- end -}}

{{- define "edumind.selfServiceNamespace" -}}
{{- default .Release.Namespace .Values.selfService.namespace -}}
{{- end -}}

{{- define "edumind.redisSecretName" -}}
{{- default (printf "%s-redis" (include "edumind.fullname" .)) .Values.dataplane.redis.existingSecret -}}
{{- end -}}

{{- define "edumind.redisSecretKey" -}}
{{- if .Values.dataplane.redis.existingSecret -}}{{ .Values.dataplane.redis.existingSecretKey }}{{- else -}}url{{- end -}}
{{- end -}}

{{/* HS256 is configured unless only a JWKS is given. */}}
{{- define "edumind.hs256Enabled" -}}
{{- $a := .Values.dataplane.auth -}}
{{- if or $a.hs256.existingSecret $a.hs256.value (not (or $a.jwks.existingConfigMap $a.jwks.existingSecret)) -}}true{{- end -}}
{{- end -}}

{{- define "edumind.hs256SecretName" -}}
{{- default (printf "%s-dataplane-auth" (include "edumind.fullname" .)) .Values.dataplane.auth.hs256.existingSecret -}}
{{- end -}}

{{- define "edumind.hs256SecretKey" -}}
{{- if .Values.dataplane.auth.hs256.existingSecret -}}{{ .Values.dataplane.auth.hs256.existingSecretKey }}{{- else -}}hs256-secret{{- end -}}
{{- end -}}

{{- define "edumind.s3SecretName" -}}
{{- default (printf "%s-backup-s3" (include "edumind.fullname" .)) .Values.backup.storage.s3.existingSecret -}}
{{- end -}}

{{- define "edumind.backupClaimName" -}}
{{- default (printf "%s-backups" (include "edumind.fullname" .)) .Values.backup.storage.pvc.existingClaim -}}
{{- end -}}

{{/* Distinct PostgreSQL ports of the target servers (operator view and client view). */}}
{{- define "edumind.postgresPorts" -}}
{{- $ports := list -}}
{{- range .Values.targetServers -}}
{{- $ports = append $ports (int (default 5432 .port)) -}}
{{- if .clientPort }}{{ $ports = append $ports (int .clientPort) }}{{ end -}}
{{- end -}}
{{- toJson ($ports | uniq) -}}
{{- end -}}

{{/* The namespaces RBAC for `watched` rules goes to: JSON list, or "[]" for cluster-wide. */}}
{{- define "edumind.watchNamespaces" -}}
{{- toJson (.Values.watchNamespaces | uniq | sortAlpha) -}}
{{- end -}}

{{/* Default backup storage as JSON in the shape of School spec.backup.storage. */}}
{{- define "edumind.backupDefaultStorage" -}}
{{- $st := .Values.backup.storage -}}
{{- if eq $st.type "pvc" -}}
{{- toJson (dict "persistentVolumeClaim" (include "edumind.backupClaimName" .)) -}}
{{- else if eq $st.type "azure" -}}
{{- $az := dict "account" $st.azure.account "container" $st.azure.container -}}
{{- with $st.azure.prefix }}{{ $_ := set $az "prefix" . }}{{ end -}}
{{- with $st.azure.endpoint }}{{ $_ := set $az "endpoint" . }}{{ end -}}
{{- with $st.azure.existingSecret -}}
{{- $creds := dict "secretName" . -}}
{{- if $st.azure.sasToken }}{{ $_ := set $creds "sasTokenKey" "AZURE_STORAGE_SAS_TOKEN" }}{{ end -}}
{{- $_ := set $az "credentials" $creds -}}
{{- end -}}
{{- toJson (dict "azure" $az) -}}
{{- else -}}
{{- $s3 := dict "bucket" $st.s3.bucket -}}
{{- with $st.s3.prefix }}{{ $_ := set $s3 "prefix" . }}{{ end -}}
{{- with $st.s3.endpoint }}{{ $_ := set $s3 "endpoint" . }}{{ end -}}
{{- with $st.s3.region }}{{ $_ := set $s3 "region" . }}{{ end -}}
{{- if or $st.s3.existingSecret $st.s3.accessKeyId -}}
{{- $_ := set $s3 "credentials" (dict "secretName" (include "edumind.s3SecretName" .)) -}}
{{- end -}}
{{- toJson (dict "s3" $s3) -}}
{{- end -}}
{{- end -}}

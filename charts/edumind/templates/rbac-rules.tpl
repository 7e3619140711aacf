{{/*
The RBAC rules of each component, one named template per scope. They must equal
`edumind-operator rbac` (crds/src/rbac.rs); scripts/check-chart.sh compares the rendered
Roles with that list and fails on anything missing or extra.
*/}}

{{- define "edumind.operator.rules.watched" -}}
- apiGroups: [edumind.ai]
  resources: [schools]
  verbs: [list, watch, patch]
- apiGroups: [edumind.ai]
  resources: [schools/status]
  verbs: [patch]
- apiGroups: [edumind.ai]
  resources: [schools/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Backups, SchoolBackup and SchoolRestore.
- apiGroups: [edumind.ai]
  resources: [schools]
  verbs: [get]
- apiGroups: [""]
  resources: [secrets]
  verbs: [delete]
- apiGroups: [batch]
  resources: [cronjobs, jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [edumind.ai]
  resources: [schoolbackups]
  verbs: [list, watch]
- apiGroups: [edumind.ai]
  resources: [schoolrestores]
  verbs: [get, list, watch, patch]
- apiGroups: [edumind.ai]
  resources: [schoolbackups/status, schoolrestores/status]
  verbs: [patch]
{{- end -}}

{{- define "edumind.operator.rules.release" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [edumind-operator-leader]
  verbs: [get, update]
{{- end -}}

{{- define "edumind.operator.rules.selfService" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update]
{{- end -}}

{{/* The data plane's in-cluster tenant source (list, then watch; edumind_dataplane::kube_source). */}}
{{- define "edumind.dataplane.rules.watched" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
{{- end -}}

{{- define "edumind.dataplane.rules.selfService" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
{{- end -}}

{{/*
Renders Role(s) or a ClusterRole plus bindings for one component and scope.
include "edumind.rbac" (dict "ctx" $ "component" "operator" "scope" "watched" "sa" $sa)
*/}}
{{- define "edumind.rbac" -}}
{{- $ctx := .ctx -}}
{{- $base := printf "%s-%s" (include "edumind.fullname" $ctx) .component -}}
{{- $name := printf "%s-%s" $base (.scope | lower) | trunc 63 | trimSuffix "-" -}}
{{- $rules := include (printf "edumind.%s.rules.%s" .component .scope) $ctx -}}
{{- $namespaces := list -}}
{{- $cluster := false -}}
{{- if eq .scope "watched" -}}
  {{- if $ctx.Values.watchNamespaces -}}
    {{- $namespaces = $ctx.Values.watchNamespaces | uniq | sortAlpha -}}
  {{- else -}}
    {{- $cluster = true -}}
  {{- end -}}
{{- else if eq .scope "release" -}}
  {{- $namespaces = list $ctx.Release.Namespace -}}
{{- else -}}
  {{- $namespaces = list (include "edumind.selfServiceNamespace" $ctx) -}}
{{- end -}}
{{- $labels := include "edumind.componentLabels" (dict "ctx" $ctx "component" .component) -}}
{{- if $cluster }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $name }}
  labels:
    {{- $labels | nindent 4 }}
    edumind.ai/rbac-scope: {{ .scope }}
rules:
  {{- $rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $name }}
  labels:
    {{- $labels | nindent 4 }}
    edumind.ai/rbac-scope: {{ .scope }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ .sa }}
    namespace: {{ $ctx.Release.Namespace }}
{{- else }}
{{- range $ns := $namespaces }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}
  namespace: {{ $ns }}
  labels:
    {{- $labels | nindent 4 }}
    edumind.ai/rbac-scope: {{ $.scope }}
rules:
  {{- $rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}
  namespace: {{ $ns }}
  labels:
    {{- $labels | nindent 4 }}
    edumind.ai/rbac-scope: {{ $.scope }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ $.sa }}
    namespace: {{ $ctx.Release.Namespace }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pieces of the NetworkPolicies. */}}
{{- define "edumind.np.dns" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}
{{- define "edumind.np.apiServer" -}}
- to:
    {{- range .cidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  ports:
    {{- range .ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end -}}
{{/* Egress to the OTLP collector when traces are exported (root context). */}}
{{- define "edumind.np.otlp" -}}
{{- if .Values.tracing.otlpEndpoint }}
- ports:
    - {port: {{ .Values.tracing.otlpPort }}, protocol: TCP}
  {{- with .Values.tracing.otlpPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

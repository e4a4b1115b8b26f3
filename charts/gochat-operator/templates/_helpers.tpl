{{- define "gochat-operator.name" -}}gochat-operator{{- end }}
{{- define "gochat-operator.fullname" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}-gochat-operator{{- end }}
{{- define "gochat-operator.labels" -}}
app.kubernetes.io/name: {{ include "gochat-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}
{{- define "gochat-operator.selector" -}}
app.kubernetes.io/name: {{ include "gochat-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

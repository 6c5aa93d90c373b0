{{/* The chart's name. */}}
{{- define "duotone.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the operator's objects: "<release>-duotone", or the release name when it
already says duotone. */}}
{{- define "duotone.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "duotone.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels of the operator pod. Its app.kubernetes.io/name differs from the
"duotone" that IMD children carry, so selectors of the two never overlap. */}}
{{- define "duotone.selectorLabels" -}}
app.kubernetes.io/name: {{ include "duotone.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "duotone.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "duotone.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: duotone
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "duotone.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "duotone.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "duotone.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The router image the operator gives IMDs that name none. */}}
{{- define "duotone.routerImage" -}}
{{- printf "%s:%s" .Values.routerImage.repository (default .Chart.AppVersion .Values.routerImage.tag) }}
{{- end }}

{{/* The operator's RBAC rules (files/operator-rbac-rules.yaml, the same file the e2e tests
bind), as a list. */}}
{{- define "duotone.rbacRules" -}}
{{ .Files.Get "files/operator-rbac-rules.yaml" }}
{{- end }}

{{/* Namespace selector of the ServiceMonitors for IMD workloads. */}}
{{- define "duotone.workloadNamespaces" -}}
{{- if .Values.watchNamespaces }}
matchNames:
{{- range .Values.watchNamespaces }}
  - {{ . }}
{{- end }}
{{- else }}
any: true
{{- end }}
{{- end }}

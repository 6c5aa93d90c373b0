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

{{/* An image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "duotone.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "duotone.image" -}}
{{- include "duotone.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* The operator's pull policy: the value's, else Always for a tag, IfNotPresent for a digest
(the rule the operator applies to IMD images, duotone_operator/render/placement.py). */}}
{{- define "duotone.pullPolicy" -}}
{{- if .Values.image.pullPolicy }}
{{- .Values.image.pullPolicy }}
{{- else if .Values.image.digest }}
{{- "IfNotPresent" }}
{{- else }}
{{- "Always" }}
{{- end }}
{{- end }}

{{/* The router image the operator gives IMDs that name none. */}}
{{- define "duotone.routerImage" -}}
{{- include "duotone.imageRef" (dict "image" .Values.routerImage "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* kube-score checks the operator Deployment deliberately does not follow, each for a reason
that holds for this object only (docs/helm.md, "Manifest audit"):
- container-image-pull-policy: a policy other than Always was chosen (a digest cannot change;
  or images preloaded on the nodes);
- deployment-has-host-podantiaffinity: replicas spread by a topologySpreadConstraint on the
  hostname, which kube-score does not recognise (a required anti-affinity would leave the
  standby Pending on a one-node cluster);
- pod-networkpolicy: networkPolicy.enabled is false, the installer's choice (policies managed
  elsewhere, or a CNI that does not enforce them). */}}
{{- define "duotone.auditIgnores" -}}
{{- $checks := list }}
{{- if ne (include "duotone.pullPolicy" .) "Always" }}
{{- $checks = append $checks "container-image-pull-policy" }}
{{- end }}
{{- $hostSpread := false }}
{{- range .Values.topologySpread }}
{{- if eq .topologyKey "kubernetes.io/hostname" }}{{ $hostSpread = true }}{{ end }}
{{- end }}
{{- if and $hostSpread (not (dig "podAntiAffinity" nil .Values.affinity)) }}
{{- $checks = append $checks "deployment-has-host-podantiaffinity" }}
{{- end }}
{{- if not .Values.networkPolicy.enabled }}
{{- $checks = append $checks "pod-networkpolicy" }}
{{- end }}
{{- join "," $checks }}
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

{{/*
Chart name, truncated to 63 characters (a label value).
*/}}
{{- define "wasmpod.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, prefixed with the chart name unless it already
contains it. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "wasmpod.fullname" -}}
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

{{/*
The name of one of the chart's components: fullname-SUFFIX, the fullname cut
so that the whole stays within 63 characters (Jobs put their name in a label).
Call with (dict "ctx" $ "suffix" "node").
*/}}
{{- define "wasmpod.componentName" -}}
{{- $max := sub 62 (len .suffix) | int }}
{{- printf "%s-%s" (include "wasmpod.fullname" .ctx | trunc $max | trimSuffix "-") .suffix }}
{{- end }}

{{/*
Chart label value: name-version.
*/}}
{{- define "wasmpod.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of a component. Call with (dict "ctx" $ "component" "node").
*/}}
{{- define "wasmpod.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wasmpod.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Common labels of a component. Call with (dict "ctx" $ "component" "node").
*/}}
{{- define "wasmpod.labels" -}}
helm.sh/chart: {{ include "wasmpod.chart" .ctx }}
{{ include "wasmpod.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: wasmpod
{{- end }}

{{/* Names of the chart's objects. */}}
{{- define "wasmpod.nodeName" -}}
{{- include "wasmpod.componentName" (dict "ctx" . "suffix" "node") }}
{{- end }}
{{- define "wasmpod.uninstallName" -}}
{{- include "wasmpod.componentName" (dict "ctx" . "suffix" "uninstall") }}
{{- end }}
{{- define "wasmpod.uninstallWaitName" -}}
{{- include "wasmpod.componentName" (dict "ctx" . "suffix" "uninstall-wait") }}
{{- end }}

{{/*
The installer image.
*/}}
{{- define "wasmpod.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The node label the installer sets once the handler answers, and that the
RuntimeClass selects.
*/}}
{{- define "wasmpod.readyLabel" -}}
wasmpod.io/ready
{{- end }}

{{/*
The node label with the installer's step on that node (installing,
restart-pending, waiting-for-cri, ready, uninstalling,
uninstall-restart-pending): on from the installer's first change to the
node until its uninstall is done, which is what the uninstall waiter waits
for.
*/}}
{{- define "wasmpod.stepLabel" -}}
wasmpod.io/step
{{- end }}

{{/*
Where wasmpod goes on the node: the arguments `install`, `uninstall` and
`status` share (a YAML list, indented by the caller).
*/}}
{{- define "wasmpod.nodeTargetArgs" -}}
- --host-root
- /host
- --bin-dir
- {{ .Values.node.binDir | quote }}
- --distro
- {{ .Values.node.distro | quote }}
{{- with .Values.node.containerdConfig }}
- --config
- {{ . | quote }}
{{- end }}
{{- with .Values.node.socket }}
- --socket
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Arguments of `wasmpod-node install` and `wasmpod-node uninstall` after the
verb (a YAML list, indented by the caller).
*/}}
{{- define "wasmpod.nodeArgs" -}}
{{ include "wasmpod.nodeTargetArgs" . }}
- --restart
- {{ .Values.node.restart | quote }}
{{- with .Values.node.restartCommand }}
- --restart-command
{{- /* kubelet expands $(VAR) in args and turns $$ into $: escape every $ */}}
- {{ . | replace "$" "$$" | quote }}
{{- end }}
- --handler-timeout
- {{ .Values.node.handlerTimeout | quote }}
- --node-name
- $(NODE_NAME)
- --label
- {{ include "wasmpod.readyLabel" . }}
- --step-label
- {{ include "wasmpod.stepLabel" . }}
- --wait
{{- end }}

{{/*
Scheduling of the installer and uninstall pods: the same nodes for both.
*/}}
{{- define "wasmpod.nodeScheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The privileged node pod's host access: host PID namespace (to reach the
host's systemd/containerd) and the host root at /host.
*/}}
{{- define "wasmpod.hostVolume" -}}
- name: host-root
  hostPath:
    path: /
    type: Directory
{{- end }}

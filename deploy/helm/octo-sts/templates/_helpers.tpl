{{/* Names. */}}
{{- define "octo-sts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "octo-sts.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "octo-sts.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "octo-sts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: sts, envoy, redis, ratelimit, prober. */}}
{{- define "octo-sts.selector" -}}
app.kubernetes.io/name: {{ include "octo-sts.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "octo-sts.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "octo-sts.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "octo-sts.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The STS pods' headless Service, as Envoy resolves it (every ready pod's address). */}}
{{- define "octo-sts.stsHeadlessHost" -}}
{{- printf "%s-sts-headless.%s.svc.%s" (include "octo-sts.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "octo-sts.redisHost" -}}
{{- printf "%s-redis.%s.svc.%s" (include "octo-sts.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "octo-sts.ratelimitHost" -}}
{{- printf "%s-ratelimit.%s.svc.%s" (include "octo-sts.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* Redis for the service: the release's own, or an external one from a Secret. */}}
{{- define "octo-sts.redisConfigured" -}}
{{- if or .Values.redis.enabled .Values.redis.external.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* The replicas Envoy's circuit breakers must admit: the most the STS Deployment can reach. */}}
{{- define "octo-sts.stsMaxReplicas" -}}
{{- if .Values.sts.autoscaling.enabled -}}
{{- .Values.sts.autoscaling.maxReplicas -}}
{{- else -}}
{{- .Values.sts.replicas -}}
{{- end -}}
{{- end -}}

{{/* Hardening every container of the chart shares (docs/containers.md). */}}
{{- define "octo-sts.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "octo-sts.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Checks that stop a release that could not work, with the reason. */}}
{{- define "octo-sts.validate" -}}
{{- if not .Values.sts.domain -}}
{{- fail "sts.domain is required: the public host name workloads request tokens for" -}}
{{- end -}}
{{- if not (or .Values.envoy.tlsSecret .Values.envoy.config) -}}
{{- fail "envoy.tlsSecret is required: a kubernetes.io/tls Secret for the gateway's listener" -}}
{{- end -}}
{{- $apps := .Values.github.apps -}}
{{- if and $apps .Values.github.app.id -}}
{{- fail "github.app.id and github.apps are exclusive: one App, or several (docs/github-apps.md)" -}}
{{- end -}}
{{- if not (or $apps .Values.github.app.id) -}}
{{- fail "github.app.id (one App) or github.apps (several) is required" -}}
{{- end -}}
{{- if and .Values.github.app.id (eq .Values.github.app.signer "pem") (not .Values.github.app.existingSecret) -}}
{{- fail "github.app.existingSecret is required with signer pem: the Secret holding the App's key" -}}
{{- end -}}
{{- if and .Values.github.app.id (ne .Values.github.app.signer "pem") (not .Values.github.app.kmsKey) -}}
{{- fail "github.app.kmsKey is required with a KMS signer (docs/kms.md)" -}}
{{- end -}}
{{- range $apps -}}
{{- if and .key .kmsKey -}}
{{- fail (printf "github.apps: App %v has both key and kmsKey" .id) -}}
{{- end -}}
{{- if and .key (not $.Values.github.appsExistingSecret) -}}
{{- fail "github.appsExistingSecret is required when an App in github.apps has a key file" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.webhook.enabled (not .Values.webhook.existingSecret) -}}
{{- fail "webhook.existingSecret is required with webhook.enabled (OCTOSTS_WEBHOOK_SECRETS)" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.external.existingSecret -}}
{{- fail "redis.enabled and redis.external.existingSecret are exclusive" -}}
{{- end -}}
{{- if and .Values.ratelimit.enabled (not .Values.redis.enabled) -}}
{{- fail "ratelimit.enabled needs redis.enabled: the ratelimit service counts in the release's Redis" -}}
{{- end -}}
{{- if and .Values.prober.enabled (not (and .Values.prober.audience (or .Values.prober.identity .Values.prober.negativeIdentity))) -}}
{{- fail "prober.enabled needs prober.audience and prober.identity (with scope, expect) or prober.negativeIdentity" -}}
{{- end -}}
{{- end -}}

{{/* GITHUB_APPS as JSON (a YAML flow list): key files from appsExistingSecret, or KMS keys. */}}
{{- define "octo-sts.githubApps" -}}
{{- $out := list -}}
{{- range .Values.github.apps -}}
{{- $app := dict "id" (int .id) -}}
{{- if .key -}}
{{- $_ := set $app "private_key_file" (printf "/run/secrets/github-apps/%s" .key) -}}
{{- else -}}
{{- $_ := set $app "signer" (required (printf "github.apps: App %v needs key or signer + kmsKey" .id) .signer) -}}
{{- $_ := set $app "kms_key" (required (printf "github.apps: App %v needs kmsKey" .id) .kmsKey) -}}
{{- end -}}
{{- if .checks -}}
{{- $_ := set $app "checks" true -}}
{{- end -}}
{{- $out = append $out $app -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

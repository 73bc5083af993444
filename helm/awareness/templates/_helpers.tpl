{{/*
Names, labels and the shared pieces every workload uses. The whole of a service
(Deployment, Service, HPA, PDB) is the one named template "awareness.service" at
the end of this file; templates/services.yaml loops over .Values.services with it.
*/}}

{{- define "awareness.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "awareness.fullname" -}}
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

{{- define "awareness.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a component's resources: <fullname>-<component>, kept within the 63-character limit. */}}
{{- define "awareness.componentName" -}}
{{- printf "%s-%s" (include "awareness.fullname" .root | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" -}}
{{- end -}}

{{/*
Name of a gRPC component's headless Service: its DNS name answers with every ready pod's IP.
Takes (dict "root" $ "component" name).
*/}}
{{- define "awareness.headlessName" -}}
{{- include "awareness.componentName" (dict "root" .root "component" (printf "%s-headless" .component)) -}}
{{- end -}}

{{/*
Where other pods reach a service: for gRPC, dns:/// on the headless Service, so the client's
resolver sees every pod and its round_robin policy balances calls rather than connections.
Takes (dict "root" $ "component" name "svc" values-block).
*/}}
{{- define "awareness.target" -}}
{{- if eq .svc.protocol "grpc" -}}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "awareness.headlessName" .) .root.Release.Namespace .root.Values.grpc.clusterDomain (int .svc.port) -}}
{{- else -}}
{{- printf "%s:%d" (include "awareness.componentName" .) (int .svc.port) -}}
{{- end -}}
{{- end -}}

{{/* Labels that identify a component's pods (stable: used in selectors). Takes (dict "root" $ "component" name). */}}
{{- define "awareness.selectorLabels" -}}
app.kubernetes.io/name: {{ include "awareness.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels that every pod of this release carries. */}}
{{- define "awareness.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "awareness.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The full label set. Takes (dict "root" $ "component" name). */}}
{{- define "awareness.labels" -}}
{{ include "awareness.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: awareness
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "awareness.chart" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "awareness.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "awareness.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "awareness.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secret names: the user's existingSecret when given, the chart's own otherwise. */}}
{{- define "awareness.databaseSecretName" -}}
{{- default (include "awareness.componentName" (dict "root" . "component" "datastores")) .Values.database.existingSecret -}}
{{- end -}}

{{- define "awareness.redisSecretName" -}}
{{- default (include "awareness.componentName" (dict "root" . "component" "datastores")) .Values.redis.existingSecret -}}
{{- end -}}

{{/*
Service identities. Every service holds its own mTLS certificate (SPIFFE ID
spiffe://awareness.internal/service/<component> as URI SAN) and its own service secret; a CLI job
carries the identity of the service it belongs to. Nothing is shared between components.
*/}}
{{- define "awareness.identityComponents" -}}
[gateway, ingest, gdpr, policy, scoring, analytics, signing]
{{- end -}}

{{/*
Whose identity a workload carries. Takes (dict "root" $ "component" name): a service its own, the
retraining job scoring's, the retention job gdpr's, the weekly report job analytics', the verification job ingest's. Empty for the jobs that call no service (the
migration hook and the KEK rotation job, which reach only the database and the API server).
*/}}
{{- define "awareness.identity" -}}
{{- $jobs := dict "retrain" "scoring" "retention" "gdpr" "report" "analytics" "verification" "ingest" -}}
{{- if has .component (include "awareness.identityComponents" . | fromYamlArray) -}}
{{- .component -}}
{{- else -}}
{{- index $jobs .component | default "" -}}
{{- end -}}
{{- end -}}

{{/* The SPIFFE ID and DNS name in a component's certificate. Takes (dict "component" name). */}}
{{- define "awareness.spiffeId" -}}
{{- printf "spiffe://awareness.internal/service/%s" .component -}}
{{- end -}}

{{- define "awareness.identityDnsName" -}}
{{- printf "%s.awareness.internal" .component -}}
{{- end -}}

{{/*
The kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) holding a component's certificate: the one
named in mtls.existingSecrets, else the one its cert-manager Certificate writes. With cert-manager off
and no Secret named, rendering fails. Takes (dict "root" $ "component" name).
*/}}
{{- define "awareness.mtlsSecretName" -}}
{{- $existing := index (.root.Values.mtls.existingSecrets | default dict) .component -}}
{{- if $existing -}}
{{- $existing -}}
{{- else if .root.Values.mtls.certManager.enabled -}}
{{- include "awareness.componentName" (dict "root" .root "component" (printf "%s-mtls" .component)) -}}
{{- else -}}
{{- $root := .root -}}
{{- $missing := list -}}
{{- range $component := include "awareness.identityComponents" . | fromYamlArray -}}
{{- if and (index $root.Values.services $component).enabled (not (index ($root.Values.mtls.existingSecrets | default dict) $component)) -}}
{{- $missing = append $missing (printf "mtls.existingSecrets.%s" $component) -}}
{{- end -}}
{{- end -}}
{{- fail (printf "mtls.certManager.enabled is false, so each service's certificate must come from a kubernetes.io/tls Secret you name (keys tls.crt, tls.key, ca.crt; URI SAN spiffe://awareness.internal/service/<component>); missing: %s" (join ", " $missing)) -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart's cert-manager Certificate makes this component's certificate. */}}
{{- define "awareness.mtlsCertificateRendered" -}}
{{- if and .root.Values.mtls.certManager.enabled (not (index (.root.Values.mtls.existingSecrets | default dict) .component)) -}}true{{- end -}}
{{- end -}}

{{/* A component's service secret: the one named in serviceSecrets.existingSecrets, else the chart's. */}}
{{- define "awareness.serviceSecretName" -}}
{{- default (include "awareness.componentName" (dict "root" .root "component" (printf "%s-service-secret" .component))) (index (.root.Values.serviceSecrets.existingSecrets | default dict) .component) -}}
{{- end -}}

{{- define "awareness.gdprKeysSecretName" -}}
{{- default (include "awareness.componentName" (dict "root" . "component" "gdpr-keys")) .Values.gdprKeys.existingSecret -}}
{{- end -}}

{{- define "awareness.fingerprintSecretName" -}}
{{- default (include "awareness.componentName" (dict "root" . "component" "ingest-fingerprint")) .Values.ingestFingerprintSecret.existingSecret -}}
{{- end -}}

{{- define "awareness.gophishSecretName" -}}
{{- default (include "awareness.componentName" (dict "root" . "component" "gophish")) .Values.gophishSecret.existingSecret -}}
{{- end -}}

{{/* "true" when some service (the migration hook migrates them all) has no database.perServiceSecrets entry. */}}
{{- define "awareness.sharedDatabaseNeeded" -}}
{{- $root := . -}}
{{- range $name := list "ingest" "policy" "scoring" "analytics" "signing" "gdpr" "gateway" -}}
{{- if not (index $root.Values.database.perServiceSecrets $name) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "awareness.pkiSecretName" -}}
{{- default (include "awareness.componentName" (dict "root" . "component" "pki")) .Values.pki.existingSecret -}}
{{- end -}}

{{- define "awareness.pkiEnabled" -}}
{{- if or .Values.pki.existingSecret .Values.pki.files -}}true{{- end -}}
{{- end -}}

{{- define "awareness.redisEnabled" -}}
{{- if or .Values.redis.existingSecret .Values.redis.url -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the portal signs people in with OpenID Connect (portal.oidc.issuer is set). The client
id and the Secret holding the client secret must then be named too: rendering fails otherwise,
rather than a gateway that refuses to start.
*/}}
{{- define "awareness.portalOidcEnabled" -}}
{{- $oidc := .Values.portal.oidc -}}
{{- if $oidc.issuer -}}
{{- $missing := list -}}
{{- if not $oidc.clientId -}}{{- $missing = append $missing "portal.oidc.clientId" -}}{{- end -}}
{{- if not $oidc.existingSecret -}}{{- $missing = append $missing "portal.oidc.existingSecret" -}}{{- end -}}
{{- if $missing -}}
{{- fail (printf "portal.oidc.issuer is set, so the portal's OpenID Connect client needs portal.oidc.clientId and portal.oidc.existingSecret (a Secret you create, holding the client secret under portal.oidc.secretKey); missing: %s" (join ", " $missing)) -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/*
AWARENESS_PORTAL_PUBLIC_URL: portal.publicUrl, else https://<first ingress host> when the Ingress
is enabled with TLS (wildcard hosts skipped), else "" (the portal takes it from each request).
*/}}
{{- define "awareness.portalPublicUrl" -}}
{{- if .Values.portal.publicUrl -}}
{{- .Values.portal.publicUrl | trimSuffix "/" -}}
{{- else if and .Values.ingress.enabled .Values.ingress.tls.enabled -}}
{{- $hosts := list -}}
{{- range $host := .Values.ingress.hosts -}}
{{- if not (hasPrefix "*" $host) -}}{{- $hosts = append $hosts $host -}}{{- end -}}
{{- end -}}
{{- with $hosts -}}{{- printf "https://%s" (first .) -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A secret value that survives upgrades: the explicit value when given, else the one
already stored in the cluster (lookup), else 32 fresh random bytes (base64).
Takes (dict "root" $ "secretName" name "key" key "value" explicit).
*/}}
{{- define "awareness.persistentSecretValue" -}}
{{- if .value -}}
{{- .value | b64enc -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secretName -}}
{{- if and $existing (index ($existing.data | default dict) .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randBytes 32 | b64enc -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Who calls whom: the table in docs/architecture.md ("Who calls whom"), CLI jobs included.
It is the allow-list the NetworkPolicies are built from, so it lives here, not in values.
*/}}
{{- define "awareness.callGraph" -}}
gateway: [ingest, policy, scoring, signing, gdpr, analytics]
ingest: [gdpr, signing, scoring, policy, analytics]
scoring: [gdpr, ingest]
analytics: [gdpr, ingest, scoring, signing]
gdpr: [ingest]
policy: []
signing: []
retrain: [scoring]
retention: [gdpr]
report: [analytics]
verification: [ingest]
backup: []
kek-rotation: []
migrate: []
{{- end -}}

{{/* Components that hold a database connection. */}}
{{- define "awareness.databaseClients" -}}
[ingest, policy, scoring, analytics, signing, gdpr, gateway, migrate, kek-rotation, verification, backup]
{{- end -}}

{{- define "awareness.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "awareness.containerSecurityContext" -}}
{{ toYaml .Values.securityContext }}
{{- end -}}

{{/*
Environment every workload shares. Takes (dict "root" $ "component" name). A workload with an
identity (awareness.identity) gets its own certificate and service secret as files.
*/}}
{{- define "awareness.commonEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "awareness-%s" .component | quote }}
{{- if include "awareness.identity" . }}
- name: AWARENESS_MTLS_CERT_FILE
  value: /etc/awareness/mtls/tls.crt
- name: AWARENESS_MTLS_KEY_FILE
  value: /etc/awareness/mtls/tls.key
- name: AWARENESS_MTLS_CA_FILE
  value: /etc/awareness/mtls/ca.crt
- name: AWARENESS_SERVICE_SECRET_FILE
  value: /etc/awareness/service/service-secret
{{- end }}
{{- end -}}

{{/*
DATABASE_URL and the optional per-service overrides AWARENESS_<SERVICE>_DATABASE_URL.
Takes (dict "root" $ "services" (list names)); "secretName" overrides the Secret (the migration hook's copy).
*/}}
{{- define "awareness.databaseEnv" -}}
{{- $root := .root -}}
{{- $secretName := default (include "awareness.databaseSecretName" $root) .secretName -}}
{{- $own := $root.Values.database.perServiceSecrets -}}
{{- $shared := false -}}
{{- range $service := .services }}{{- if not (index $own $service) }}{{- $shared = true }}{{- end }}{{- end }}
{{- /* A pod whose services all have their own role gets no shared URL: it could not use another's. */}}
{{- if $shared }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ ternary $root.Values.database.existingSecretKey "DATABASE_URL" (not (empty $root.Values.database.existingSecret)) }}
{{- end }}
{{- range $service := .services }}
{{- if index $own $service }}
- name: {{ printf "AWARENESS_%s_DATABASE_URL" (upper $service) }}
  valueFrom:
    secretKeyRef:
      name: {{ index $own $service }}
      key: {{ $root.Values.database.perServiceSecretKey }}
{{- else if or $root.Values.database.existingSecret (index $root.Values.database.perServiceUrls $service) }}
{{- $overrideKey := printf "AWARENESS_%s_DATABASE_URL" (upper $service) }}
- name: {{ $overrideKey }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $overrideKey }}
      optional: true
{{- end }}
{{- end }}
{{- end -}}

{{/*
/tmp, plus the identity's certificate and service secret. Whole-Secret mounts, never subPath: the
kubelet then swaps in a renewed certificate, and the process, which watches the file, exits
gracefully to be restarted with it. Both take (dict "root" $ "component" name).
*/}}
{{- define "awareness.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "awareness.identity" . }}
- name: mtls
  mountPath: /etc/awareness/mtls
  readOnly: true
- name: service-secret
  mountPath: /etc/awareness/service
  readOnly: true
{{- end }}
{{- end -}}

{{- define "awareness.commonVolumes" -}}
{{- $root := .root -}}
{{- $identity := include "awareness.identity" . -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $root.Values.tmpSizeLimit }}
{{- if $identity }}
{{- $context := dict "root" $root "component" $identity }}
- name: mtls
  secret:
    secretName: {{ include "awareness.mtlsSecretName" $context }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
- name: service-secret
  secret:
    secretName: {{ include "awareness.serviceSecretName" $context }}
    defaultMode: 0440
    items:
      - key: {{ ternary $root.Values.serviceSecrets.existingSecretKey "service-secret" (not (empty (index ($root.Values.serviceSecrets.existingSecrets | default dict) $identity))) }}
        path: service-secret
{{- end }}
{{- end -}}

{{/* Annotations that roll pods when settings or chart-managed secrets change. */}}
{{- define "awareness.checksumAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ include (print .Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- end -}}

{{/*
A CLI job's pod template (the CronJobs and the migration hook share it).
Takes (dict "root" $ "component" name "args" list "resources" map "serviceAccountName" name
"migrationHook" bool "databaseSecretName" name-or-empty). The hook runs before the release's ConfigMap and Secrets exist, so it
gets its settings inline, its own database Secret copy and no identity (it calls no service).
*/}}
{{- define "awareness.jobPodTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "awareness.labels" (dict "root" $root "component" .component) | nindent 4 }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ .serviceAccountName }}
  {{- /* Only the KEK rotation job talks to the Kubernetes API (its Role: one Secret, one Deployment). */}}
  automountServiceAccountToken: {{ .automountToken | default false }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "awareness.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "awareness.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      {{- if .migrationHook }}
      env:
        - name: OTEL_SERVICE_NAME
          value: {{ printf "awareness-%s" .component | quote }}
        - name: AWARENESS_LOG_LEVEL
          value: {{ $root.Values.config.logLevel | quote }}
        - name: AWARENESS_DATA_DIR
          value: {{ $root.Values.config.dataDir | quote }}
        {{- include "awareness.databaseEnv" (dict "root" $root "services" (list "ingest" "policy" "scoring" "analytics" "signing" "gdpr" "gateway") "secretName" .databaseSecretName) | nindent 8 }}
      {{- else }}
      envFrom:
        - configMapRef:
            name: {{ include "awareness.componentName" (dict "root" $root "component" "config") }}
      env:
        {{- include "awareness.commonEnv" (dict "root" $root "component" .component) | nindent 8 }}
        {{- with .extraEnv }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- end }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- include "awareness.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        {{- if .migrationHook }}
        - name: tmp
          mountPath: /tmp
        {{- else }}
        {{- include "awareness.commonVolumeMounts" (dict "root" $root "component" .component) | nindent 8 }}
        {{- end }}
        {{- with .extraVolumeMounts }}
        {{- . | nindent 8 }}
        {{- end }}
  volumes:
    {{- if .migrationHook }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.tmpSizeLimit }}
    {{- else }}
    {{- include "awareness.commonVolumes" (dict "root" $root "component" .component) | nindent 4 }}
    {{- end }}
    {{- with .extraVolumes }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
One service: Deployment + Service (+ headless Service for gRPC) + HorizontalPodAutoscaler + PodDisruptionBudget.
Takes (dict "root" $ "name" <service name> "svc" <its values block>).
*/}}
{{- /* The gateway's gRPC door port, or "" when this component has none (or it is off). */}}
{{- define "awareness.doorPort" -}}
{{- $svc := index .root.Values.services .component -}}
{{- if and (eq .component "gateway") (gt (int ($svc.grpcDoorPort | default 0)) 0) -}}
{{- $svc.grpcDoorPort -}}
{{- end -}}
{{- end -}}

{{- /*
The kubernetes.io/tls Secret the gRPC door serves TLS with: gatewayDoorTLS.secretName, else the one
its cert-manager Certificate writes (certificates.yaml), else "" (plaintext). Takes the root context.
*/}}
{{- define "awareness.doorTlsSecretName" -}}
{{- $tls := .Values.gatewayDoorTLS -}}
{{- if and $tls.secretName ($tls.certManager | default dict).enabled -}}
{{- fail "gatewayDoorTLS: set secretName (a Secret you manage) or certManager.enabled (the chart's Certificate writes it), not both" -}}
{{- end -}}
{{- if $tls.secretName -}}
{{- $tls.secretName -}}
{{- else if ($tls.certManager | default dict).enabled -}}
{{- include "awareness.componentName" (dict "root" . "component" "gateway-door-tls") -}}
{{- end -}}
{{- end -}}

{{- define "awareness.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := .svc -}}
{{- $fullName := include "awareness.componentName" (dict "root" $root "component" $name) -}}
{{- $context := dict "root" $root "component" $name -}}
{{- $grpc := eq $svc.protocol "grpc" -}}
{{- $portName := $grpc | ternary "grpc" "http" -}}
{{- /* The plaintext grpc.health.v1 port of a gRPC service: kubelet's gRPC probes cannot speak TLS. */}}
{{- $healthPort := int $root.Values.grpc.healthPort -}}
{{- if and $grpc (has $healthPort (list (int $svc.port) (int $svc.metricsPort))) -}}
{{- fail (printf "grpc.healthPort (%d) must differ from services.%s.port and .metricsPort" $healthPort $name) -}}
{{- end -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullName }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "awareness.labels" $context | nindent 4 }}
spec:
  {{- if not $svc.autoscaling.enabled }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "awareness.selectorLabels" $context | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "awareness.labels" $context | nindent 8 }}
      annotations:
        {{- include "awareness.checksumAnnotations" $root | nindent 8 }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "awareness.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "awareness.podSecurityContext" $root | nindent 8 }}
      terminationGracePeriodSeconds: 30
      topologySpreadConstraints:
        - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "awareness.selectorLabels" $context | nindent 14 }}
          matchLabelKeys:
            - pod-template-hash
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "awareness.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve", {{ $name | quote }}]
          ports:
            - name: {{ $portName }}
              containerPort: {{ $svc.port }}
              protocol: TCP
            {{- if ne (int $svc.metricsPort) (int $svc.port) }}
            - name: metrics
              containerPort: {{ $svc.metricsPort }}
              protocol: TCP
            {{- end }}
            {{- if include "awareness.doorPort" $context }}
            - name: grpc-door
              containerPort: {{ include "awareness.doorPort" $context }}
              protocol: TCP
            {{- end }}
            {{- if $grpc }}
            - name: health
              containerPort: {{ $healthPort }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "awareness.componentName" (dict "root" $root "component" "config") }}
          env:
            {{- include "awareness.commonEnv" $context | nindent 12 }}
            {{- if $grpc }}
            - name: AWARENESS_GRPC_PORT
              value: {{ $svc.port | quote }}
            - name: AWARENESS_METRICS_PORT
              value: {{ $svc.metricsPort | quote }}
            - name: AWARENESS_HEALTH_PORT
              value: {{ $healthPort | quote }}
            {{- if and $root.Values.backup.enabled (has $name (list "ingest" "gdpr")) }}
            - name: AWARENESS_ARCHIVE_DIR
              value: {{ $root.Values.backup.archiveDir | quote }}
            {{- end }}
            {{- else }}
            - name: AWARENESS_GATEWAY_PORT
              value: {{ $svc.port | quote }}
            - name: AWARENESS_GATEWAY_ADMIN_PORT
              value: {{ $svc.metricsPort | quote }}
            - name: AWARENESS_GATEWAY_GRPC_PORT
              value: {{ include "awareness.doorPort" $context | default "0" | quote }}
            {{- with $root.Values.ingress.trustedProxyCIDRs }}
            - name: AWARENESS_GATEWAY_FORWARDED_ALLOW_IPS
              value: {{ join "," . | quote }}
            {{- end }}
            - name: AWARENESS_GOPHISH_SECRET_FILE
              value: /etc/awareness/gophish/gophish-secret
            {{- if and (include "awareness.doorPort" $context) (include "awareness.doorTlsSecretName" $root) }}
            - name: AWARENESS_GATEWAY_GRPC_TLS_CERT_FILE
              value: /etc/awareness/door-tls/tls.crt
            - name: AWARENESS_GATEWAY_GRPC_TLS_KEY_FILE
              value: /etc/awareness/door-tls/tls.key
            {{- end }}
            {{- end }}
            {{- if eq $name "ingest" }}
            - name: AWARENESS_INGEST_FINGERPRINT_SECRET_FILE
              value: /etc/awareness/fingerprint/fingerprint-secret
            {{- end }}
            {{- include "awareness.databaseEnv" (dict "root" $root "services" (list $name)) | nindent 12 }}
            {{- if and (eq $name "gateway") (include "awareness.redisEnabled" $root) }}
            - name: REDIS_URL
              valueFrom:
                secretKeyRef:
                  name: {{ include "awareness.redisSecretName" $root }}
                  key: {{ ternary $root.Values.redis.existingSecretKey "REDIS_URL" (not (empty $root.Values.redis.existingSecret)) }}
            {{- end }}
            {{- if and (eq $name "gateway") $root.Values.gatewayAuth.jwks }}
            - name: AWARENESS_GATEWAY_JWKS_FILE
              value: /etc/awareness/jwks/jwks.json
            {{- end }}
            {{- if and (eq $name "gateway") (include "awareness.portalOidcEnabled" $root) }}
            - name: AWARENESS_PORTAL_OIDC_CLIENT_SECRET_FILE
              value: /etc/awareness/portal-oidc/client-secret
            {{- end }}
            {{- if and (eq $name "signing") (include "awareness.pkiEnabled" $root) }}
            {{- /* Without a PKI Secret AWARENESS_PKI_DIR stays unset and signing refuses to start. */}}
            - name: AWARENESS_PKI_DIR
              value: {{ $root.Values.pki.mountPath | quote }}
            {{- end }}
            {{- if eq $name "gdpr" }}
            - name: AWARENESS_KEK_FILE
              value: /etc/awareness/gdpr/kek
            - name: AWARENESS_LOOKUP_SECRET_FILE
              value: /etc/awareness/gdpr/lookup-secret
            {{- end }}
            {{- /* One worker process per pod: replicas and the HPA scale out, whatever the image's default. */}}
            {{- $workersVar := printf "AWARENESS_%s_WORKERS" (upper $name) }}
            {{- if and (has $name (list "gateway" "ingest")) (not (hasKey ($svc.env | default dict) $workersVar)) }}
            - name: {{ $workersVar }}
              value: "1"
            {{- end }}
            {{- range $key, $value := $svc.env }}
            - name: {{ $key }}
              value: {{ $value | quote }}
            {{- end }}
          {{- if $grpc }}
          {{- /* On the plaintext health port (a gRPC probe takes a number, not a port name): the gRPC port is mTLS only. */}}
          startupProbe:
            grpc:
              port: {{ $healthPort }}
              service: ""
            periodSeconds: 2
            failureThreshold: 60
          livenessProbe:
            grpc:
              port: {{ $healthPort }}
              service: ""
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          readinessProbe:
            grpc:
              port: {{ $healthPort }}
              service: {{ $svc.readinessService | quote }}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          {{- else }}
          startupProbe:
            httpGet:
              path: /health/live
              port: {{ $portName }}
            periodSeconds: 2
            failureThreshold: 60
          livenessProbe:
            httpGet:
              path: /health/live
              port: {{ $portName }}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /health/ready
              port: {{ $portName }}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          {{- end }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- include "awareness.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "awareness.commonVolumeMounts" $context | nindent 12 }}
            {{- if and (eq $name "signing") (include "awareness.pkiEnabled" $root) }}
            - name: pki
              mountPath: {{ $root.Values.pki.mountPath }}
              readOnly: true
            {{- end }}
            {{- if eq $name "gdpr" }}
            - name: gdpr-keys
              mountPath: /etc/awareness/gdpr
              readOnly: true
            {{- end }}
            {{- if and (eq $name "gateway") $root.Values.gatewayAuth.jwks }}
            - name: jwks
              mountPath: /etc/awareness/jwks
              readOnly: true
            {{- end }}
            {{- if eq $name "gateway" }}
            - name: gophish-secret
              mountPath: /etc/awareness/gophish
              readOnly: true
            {{- end }}
            {{- if and (eq $name "gateway") (include "awareness.portalOidcEnabled" $root) }}
            - name: portal-oidc
              mountPath: /etc/awareness/portal-oidc
              readOnly: true
            {{- end }}
            {{- if and (include "awareness.doorPort" $context) (include "awareness.doorTlsSecretName" $root) }}
            - name: door-tls
              mountPath: /etc/awareness/door-tls
              readOnly: true
            {{- end }}
            {{- if eq $name "ingest" }}
            - name: fingerprint-secret
              mountPath: /etc/awareness/fingerprint
              readOnly: true
            {{- end }}
            {{- if and $root.Values.backup.enabled (has $name (list "ingest" "gdpr")) }}
            {{- include "awareness.archiveVolumeMount" $root | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "awareness.commonVolumes" $context | nindent 8 }}
        {{- if and $root.Values.backup.enabled (has $name (list "ingest" "gdpr")) }}
        {{- include "awareness.archiveVolume" $root | nindent 8 }}
        {{- end }}
        {{- if and (eq $name "signing") (include "awareness.pkiEnabled" $root) }}
        - name: pki
          secret:
            secretName: {{ include "awareness.pkiSecretName" $root }}
            defaultMode: 0440
        {{- end }}
        {{- if eq $name "gdpr" }}
        - name: gdpr-keys
          secret:
            secretName: {{ include "awareness.gdprKeysSecretName" $root }}
            defaultMode: 0440
            items:
              - key: {{ ternary $root.Values.gdprKeys.kekKey "kek" (not (empty $root.Values.gdprKeys.existingSecret)) }}
                path: kek
              - key: {{ ternary $root.Values.gdprKeys.lookupSecretKey "lookup-secret" (not (empty $root.Values.gdprKeys.existingSecret)) }}
                path: lookup-secret
        {{- end }}
        {{- if and (eq $name "gateway") $root.Values.gatewayAuth.jwks }}
        - name: jwks
          configMap:
            name: {{ include "awareness.componentName" (dict "root" $root "component" "jwks") }}
        {{- end }}
        {{- if eq $name "gateway" }}
        - name: gophish-secret
          secret:
            secretName: {{ include "awareness.gophishSecretName" $root }}
            defaultMode: 0440
            items:
              - key: {{ ternary $root.Values.gophishSecret.existingSecretKey "gophish-secret" (not (empty $root.Values.gophishSecret.existingSecret)) }}
                path: gophish-secret
        {{- end }}
        {{- if and (eq $name "gateway") (include "awareness.portalOidcEnabled" $root) }}
        - name: portal-oidc
          secret:
            secretName: {{ $root.Values.portal.oidc.existingSecret }}
            defaultMode: 0440
            items:
              - key: {{ $root.Values.portal.oidc.secretKey }}
                path: client-secret
        {{- end }}
        {{- if and (include "awareness.doorPort" $context) (include "awareness.doorTlsSecretName" $root) }}
        - name: door-tls
          secret:
            secretName: {{ include "awareness.doorTlsSecretName" $root }}
            defaultMode: 0440
            items:
              - key: tls.crt
                path: tls.crt
              - key: tls.key
                path: tls.key
        {{- end }}
        {{- if eq $name "ingest" }}
        - name: fingerprint-secret
          secret:
            secretName: {{ include "awareness.fingerprintSecretName" $root }}
            defaultMode: 0440
            items:
              - key: {{ ternary $root.Values.ingestFingerprintSecret.existingSecretKey "fingerprint-secret" (not (empty $root.Values.ingestFingerprintSecret.existingSecret)) }}
                path: fingerprint-secret
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullName }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "awareness.labels" $context | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "awareness.selectorLabels" $context | nindent 4 }}
  ports:
    - name: {{ $portName }}
      port: {{ $svc.port }}
      targetPort: {{ $portName }}
      protocol: TCP
      appProtocol: {{ $grpc | ternary "grpc" "http" }}
    {{- if ne (int $svc.metricsPort) (int $svc.port) }}
    {{- /* The gateway's admin port: Prometheus scrapes it; the Ingress routes only the public port. */}}
    - name: metrics
      port: {{ $svc.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
    {{- if include "awareness.doorPort" $context }}
    {{- /* The gateway's gRPC door: internal systems' stubs, authenticated like the HTTP API. */}}
    - name: grpc-door
      port: {{ include "awareness.doorPort" $context }}
      targetPort: grpc-door
      protocol: TCP
      appProtocol: grpc
    {{- end }}
{{- if $grpc }}
---
{{- /*
Headless: no virtual IP; DNS answers with the IP of every ready pod, which the other services'
round_robin channels connect to one by one (calls are balanced, not just connections). The
ClusterIP Service above stays for the ServiceMonitor, port-forwards and callers outside the
release. Only the gRPC port is published, so Prometheus never scrapes a pod twice.
*/}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "awareness.headlessName" $context }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "awareness.labels" $context | nindent 4 }}
spec:
  type: ClusterIP
  clusterIP: None
  # Pods that are starting or draining stay out of DNS until their readiness probe passes.
  publishNotReadyAddresses: false
  selector:
    {{- include "awareness.selectorLabels" $context | nindent 4 }}
  ports:
    - name: {{ $portName }}
      port: {{ $svc.port }}
      targetPort: {{ $portName }}
      protocol: TCP
      appProtocol: grpc
{{- end }}
{{- if $svc.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $fullName }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "awareness.labels" $context | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $fullName }}
  minReplicas: {{ $svc.autoscaling.minReplicas }}
  maxReplicas: {{ $svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $svc.autoscaling.targetCPUUtilizationPercentage }}
    {{- if $svc.autoscaling.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ $svc.autoscaling.targetMemoryUtilizationPercentage }}
    {{- end }}
{{- end }}
{{- if $svc.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $fullName }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "awareness.labels" $context | nindent 4 }}
spec:
  {{- if hasKey $svc.pdb "minAvailable" }}
  minAvailable: {{ $svc.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $svc.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "awareness.selectorLabels" $context | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
The archive volume (docs/disaster-recovery.md): ingest writes the log archive there, gdpr the erasure
tombstones, the backup CronJob the backup sets. Takes the root context.
*/}}
{{- define "awareness.archiveClaimName" -}}
{{- default (include "awareness.componentName" (dict "root" . "component" "archive")) .Values.backup.persistence.existingClaim -}}
{{- end -}}

{{- define "awareness.archiveVolume" -}}
- name: archive
  persistentVolumeClaim:
    claimName: {{ include "awareness.archiveClaimName" . }}
{{- end -}}

{{- define "awareness.archiveVolumeMount" -}}
- name: archive
  mountPath: {{ .Values.backup.archiveDir }}
{{- end -}}

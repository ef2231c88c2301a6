{{- define "vs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "vs.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "service" "consent") */}}
{{- define "vs.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "vs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "vs.secretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-secrets" (include "vs.fullname" .)) }}
{{- end -}}

{{- define "vs.sasl" -}}
{{- hasPrefix "SASL" .Values.kafka.securityProtocol -}}
{{- end -}}

{{/* The settings every process shares (the ConfigMap's data, and the hook Jobs' env). */}}
{{- define "vs.settings" -}}
VOUCHERSTREAM_ENVIRONMENT: {{ .Values.environment | quote }}
VOUCHERSTREAM_KAFKA_BOOTSTRAP: {{ required "kafka.bootstrap is required (the brokers' host:port list)" .Values.kafka.bootstrap | quote }}
VOUCHERSTREAM_KAFKA_TOPIC_PREFIX: {{ .Values.kafka.topicPrefix | quote }}
VOUCHERSTREAM_KAFKA_SECURITY_PROTOCOL: {{ .Values.kafka.securityProtocol | quote }}
VOUCHERSTREAM_KAFKA_SASL_MECHANISM: {{ .Values.kafka.saslMechanism | quote }}
VOUCHERSTREAM_KAFKA_SSL_CHECK_HOSTNAME: {{ .Values.kafka.sslCheckHostname | quote }}
{{- if .Values.kafka.caSecret }}
VOUCHERSTREAM_KAFKA_SSL_CAFILE: /etc/voucherstream/kafka/ca.crt
{{- end }}
VOUCHERSTREAM_KAFKA_REPLICATION_FACTOR: {{ .Values.kafka.replicationFactor | quote }}
VOUCHERSTREAM_KAFKA_MIN_INSYNC_REPLICAS: {{ .Values.kafka.minInsyncReplicas | quote }}
VOUCHERSTREAM_KAFKA_DLQ_REPLICATION_FACTOR: {{ .Values.kafka.dlqReplicationFactor | quote }}
VOUCHERSTREAM_CUSTOMER_PARTITIONS: {{ .Values.kafka.customerPartitions | quote }}
VOUCHERSTREAM_POSTGRES_POOL_MAX: {{ .Values.postgres.poolMax | quote }}
{{- range $name, $svc := .Values.services }}
{{ upper $name }}_KAFKA_USERNAME: {{ index $.Values.kafka.usernames $name | quote }}
{{ upper $name }}_HTTP_HOST: "0.0.0.0"
{{ upper $name }}_HTTP_PORT: {{ $svc.port | quote }}
{{- end }}
{{- range $k, $v := .Values.extraEnv }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* An env entry from the Secret: (dict "root" $ "key" "VOUCHERSTREAM_DATA_KEY" "optional" false) */}}
{{- define "vs.secretEnv" -}}
- name: {{ .key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "vs.secretName" .root }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{- define "vs.caVolume" -}}
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.caSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end -}}

{{- define "vs.caMount" -}}
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  mountPath: /etc/voucherstream/kafka
  readOnly: true
{{- end }}
{{- end -}}

{{- define "vs.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{/* The consumer groups of the topic registry (files/consumers.yaml, generated). */}}
{{- define "vs.consumers" -}}
{{ .Files.Get "files/consumers.yaml" }}
{{- end -}}

{{/* Where a principal's Kafka password is: (dict "root" $ "principal" "consent" "key" "CONSENT_KAFKA_PASSWORD")
-> "secret-name key" (its own Secret from kafka.passwordSecrets, or the chart's Secret). */}}
{{- define "vs.kafkaPasswordRef" -}}
{{- $own := index .root.Values.kafka.passwordSecrets .principal -}}
{{- if $own -}}{{ $own.name }} {{ $own.key | default "password" }}
{{- else -}}{{ include "vs.secretName" .root }} {{ .key }}{{- end -}}
{{- end -}}

{{/* An env entry with a principal's Kafka password: (dict "root" $ "principal" "consent" "name" "CONSENT_KAFKA_PASSWORD" "key" "CONSENT_KAFKA_PASSWORD") */}}
{{- define "vs.kafkaPasswordEnv" -}}
{{- $ref := splitList " " (include "vs.kafkaPasswordRef" .) -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ index $ref 0 }}
      key: {{ index $ref 1 }}
{{- end -}}

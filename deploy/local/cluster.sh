#!/usr/bin/env bash
# A secured three-broker Kafka cluster on loopback, as production runs Kafka: TLS from a CA made
# here (openssl), SASL/SCRAM logins (one per service, plus `shop`, `sender` and `admin`), ACLs
# derived from the topic registry, every topic replicated 3 times with min.insync.replicas 2.
#
#   deploy/local/cluster.sh up PYTHON       start the three nodes, then the topics and the ACLs (idempotent)
#   deploy/local/cluster.sh down            stop them (data kept; `clean` removes it)
#   deploy/local/cluster.sh kill N          kill -9 node N (1-3); `start N` brings it back
#   deploy/local/cluster.sh start N PYTHON
#   deploy/local/cluster.sh status
#   deploy/local/cluster.sh env PRINCIPAL   the VOUCHERSTREAM_KAFKA_* settings of admin|shop|sender|a service
#   deploy/local/cluster.sh clean           stop and remove the cluster's state (certificates, passwords, data)
#
# Each node is a combined KRaft controller + broker with three listeners: SASL_SSL for clients
# (19092-19094), SSL with client certificates between brokers (19192-19194) and for the
# controller quorum (19292-19294). Only SASL_SSL takes clients; a plaintext client is refused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${VOUCHERSTREAM_STATE_DIR:-$ROOT/.local}/cluster"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/voucherstream"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/deploy/local/kafka/pom.xml")"
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
BASE_PORT="${CLUSTER_BASE_PORT:-19092}"
HEAP="${CLUSTER_HEAP:-512m}"
NODES=(1 2 3)
PRINCIPALS=(admin consent segmentation issuance analytics shop sender)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

client_port() { echo $((BASE_PORT + $1 - 1)); }
internal_port() { echo $((BASE_PORT + 100 + $1 - 1)); }
controller_port() { echo $((BASE_PORT + 200 + $1 - 1)); }
bootstrap() { local out=() n; for n in "${NODES[@]}"; do out+=("127.0.0.1:$(client_port "$n")"); done; (IFS=,; echo "${out[*]}"); }

password() { sed -n "s/^$1=//p" "$STATE/passwords"; }

# ---------------------------------------------------------------- TLS and logins

make_tls() {
  local tls="$STATE/tls"
  [[ -f "$tls/broker.keystore.pem" ]] && return 0
  command -v openssl >/dev/null || die "openssl is needed to make the cluster's certificates"
  mkdir -p "$tls"
  log "making a CA and the brokers' certificate (openssl) in $tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=voucherstream-local-ca" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=broker" -keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > "$tls/broker.ext"
  openssl x509 -req -in "$tls/broker.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 3650 \
    -extfile "$tls/broker.ext" -out "$tls/broker.pem" 2>/dev/null
  # Kafka's PEM key store: an unencrypted PKCS#8 key, then the certificate chain.
  { openssl pkcs8 -topk8 -nocrypt -in "$tls/broker.key"; cat "$tls/broker.pem" "$tls/ca.pem"; } > "$tls/broker.keystore.pem"
  chmod 600 "$tls"/*.key "$tls/broker.keystore.pem"
}

make_passwords() {
  [[ -f "$STATE/passwords" ]] && return 0
  mkdir -p "$STATE"
  (umask 077; for p in "${PRINCIPALS[@]}"; do echo "$p=$(openssl rand -hex 24)"; done > "$STATE/passwords")
}

node_config() {
  local n=$1 dir="$STATE/node$1" voters=() m
  for m in "${NODES[@]}"; do voters+=("$m@127.0.0.1:$(controller_port "$m")"); done
  mkdir -p "$dir/data" "$dir/logs"
  cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=SASL_SSL://127.0.0.1:$(client_port "$n"),INTERNAL://127.0.0.1:$(internal_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=SASL_SSL://127.0.0.1:$(client_port "$n"),INTERNAL://127.0.0.1:$(internal_port "$n")
listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
log.dirs=$dir/data

# TLS everywhere; brokers and controllers prove themselves to each other with the CA's certificate.
ssl.keystore.type=PEM
ssl.keystore.location=$STATE/tls/broker.keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$STATE/tls/ca.pem
ssl.endpoint.identification.algorithm=https
listener.name.internal.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+).*\$/\$1/,DEFAULT

# Clients log in with SCRAM (credentials stored in the cluster's metadata, made at format).
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;

# Nothing is allowed that an ACL does not allow (shared/acls.py derives them from the registry).
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:broker

# Three replicas, two in sync before a write is acknowledged: one broker may be lost.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false

auto.create.topics.enable=false
num.partitions=6
group.initial.rebalance.delay.ms=0
log.segment.bytes=67108864
log.cleaner.backoff.ms=5000
num.network.threads=2
num.io.threads=2
EOF
}

java_cmd() {
  local n=$1; shift
  JAVA=(java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$ROOT/deploy/local/kafka/log4j2.yaml"
        -Dkafka.logs.dir="$STATE/node$n/logs" -cp "$KAFKA_LIBS/*" "$@")
}

format_nodes() {
  local n scram=() p cluster_id
  [[ -f "$STATE/node1/data/meta.properties" ]] && return 0
  for p in "${PRINCIPALS[@]}"; do scram+=(--add-scram "SCRAM-SHA-512=[name=$p,password=$(password "$p")]"); done
  java_cmd 1 kafka.tools.StorageTool random-uuid
  cluster_id="$("${JAVA[@]}" 2>/dev/null | tail -1)"
  for n in "${NODES[@]}"; do
    java_cmd "$n" kafka.tools.StorageTool format -t "$cluster_id" -c "$STATE/node$n/server.properties" "${scram[@]}"
    "${JAVA[@]}" >"$STATE/node$n/logs/format.log" 2>&1 || die "node $n: storage format failed, see $STATE/node$n/logs/format.log"
  done
  log "formatted three KRaft nodes (cluster $cluster_id) with SCRAM logins for ${PRINCIPALS[*]}"
}

node_pid() { [[ -f "$STATE/node$1/pid" ]] && kill -0 "$(cat "$STATE/node$1/pid")" 2>/dev/null && cat "$STATE/node$1/pid"; }

start_node() {
  local n=$1
  node_pid "$n" >/dev/null && return 0
  node_config "$n"
  java_cmd "$n" kafka.Kafka "$STATE/node$n/server.properties"
  setsid nohup "${JAVA[@]}" >"$STATE/node$n/logs/server.out" 2>&1 </dev/null &
  echo $! > "$STATE/node$n/pid"
  log "node $n: started (pid $!, clients on 127.0.0.1:$(client_port "$n"))"
}

# Brokers answering the admin login (confluent-kafka: Debian's kcat, librdkafka 2.0.2, fails
# SCRAM against Kafka 4.1 brokers that aiokafka and librdkafka 2.16 log in to).
brokers_up() {
  (set -a; eval "$(env_of admin)"; set +a; PYTHONPATH="$ROOT" "$PY" -c '
from confluent_kafka.admin import AdminClient
from shared.settings import KafkaSettings
print(len(AdminClient(KafkaSettings().librdkafka_config() | {"log_level": 0}).list_topics(timeout=3).brokers))' 2>/dev/null) || echo 0
}

wait_ready() {
  local want=${1:-3} t0=$SECONDS n
  for _ in $(seq 1 360); do
    [[ "$(brokers_up)" -ge "$want" ]] && { log "ready: $want brokers answer on $(bootstrap) after $((SECONDS - t0)) s"; return 0; }
    for n in "${NODES[@]}"; do
      if [[ -f "$STATE/node$n/pid" ]] && ! node_pid "$n" >/dev/null && [[ ! -f "$STATE/node$n/killed" ]]; then
        tail -20 "$STATE/node$n/logs/server.out" >&2; die "node $n exited, see $STATE/node$n/logs/server.out"
      fi
    done
    sleep 0.5
  done
  die "the cluster is not ready after 180 s (logs: $STATE/node*/logs/server.out)"
}

env_of() {
  local p=$1
  grep -q "^$p=" "$STATE/passwords" 2>/dev/null || die "no principal '$p' (one of: ${PRINCIPALS[*]}); is the cluster made (up)?"
  cat <<EOF
VOUCHERSTREAM_KAFKA_BOOTSTRAP=$(bootstrap)
VOUCHERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL
VOUCHERSTREAM_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
VOUCHERSTREAM_KAFKA_SASL_USERNAME=$p
VOUCHERSTREAM_KAFKA_SASL_PASSWORD=$(password "$p")
VOUCHERSTREAM_KAFKA_SSL_CAFILE=$STATE/tls/ca.pem
VOUCHERSTREAM_KAFKA_REPLICATION_FACTOR=3
VOUCHERSTREAM_KAFKA_MIN_INSYNC_REPLICAS=2
EOF
}

up() {
  command -v kcat >/dev/null && command -v openssl >/dev/null && command -v java >/dev/null \
    || "$ROOT/deploy/local/stack.sh" tools
  "$ROOT/deploy/local/stack.sh" fetch
  make_tls
  make_passwords
  local n
  for n in "${NODES[@]}"; do node_config "$n"; done
  format_nodes
  for n in "${NODES[@]}"; do rm -f "$STATE/node$n/killed"; start_node "$n"; done
  wait_ready 3
  # The registry's topics (3 replicas, 2 in sync) and its ACLs, as the admin principal.
  (set -a; eval "$(env_of admin)"; set +a; export PYTHONPATH="$ROOT"
   "$PY" -m shared.topics | awk '/^(created|updated|unchanged) /{n++; next} {print "[cluster] " $0}
                                  END {printf "[cluster] %d registry topics in place\n", n}' >&2
   "$PY" -m shared.acls --prune | sed 's/^/[cluster] /' >&2)
}

down() {
  local n pid
  for n in "${NODES[@]}"; do
    pid="$(node_pid "$n")" || continue
    log "node $n: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
  done
  for n in "${NODES[@]}"; do
    pid="$(cat "$STATE/node$n/pid" 2>/dev/null)" || continue
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$STATE/node$n/pid"
  done
}

cmd="${1:-status}"; shift || true
case "$cmd" in
  up) PY="${1:-${PY:-python3}}"; up ;;
  down) down ;;
  kill) n="${1:?node 1-3}"; pid="$(node_pid "$n")" || die "node $n is not running"
        touch "$STATE/node$n/killed"; kill -KILL "$pid"; rm -f "$STATE/node$n/pid"; log "node $n: killed -9 (pid $pid)" ;;
  start) n="${1:?node 1-3}"; PY="${2:-${PY:-python3}}"; rm -f "$STATE/node$n/killed"; start_node "$n"; wait_ready 3 ;;
  status) for n in "${NODES[@]}"; do
            if node_pid "$n" >/dev/null; then echo "node $n  up    127.0.0.1:$(client_port "$n")  pid $(node_pid "$n")"
            else echo "node $n  down  127.0.0.1:$(client_port "$n")"; fi
          done ;;
  env) env_of "${1:?principal: ${PRINCIPALS[*]}}" ;;
  bootstrap) bootstrap ;;
  clean) down; rm -rf "$STATE" ;;
  *) die "usage: $0 up [PYTHON] | down | kill N | start N | status | env PRINCIPAL | bootstrap | clean" ;;
esac

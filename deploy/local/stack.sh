#!/usr/bin/env bash
# The native local stack: Apache Kafka (KRaft, one node), PostgreSQL and Prometheus,
# started from Maven Central's jars and Debian's packages, no Docker.
#
#   deploy/local/stack.sh up [kafka|postgres|prometheus ...]   start (idempotent; fast when running)
#   deploy/local/stack.sh down                                  stop what this project started
#   deploy/local/stack.sh down-one kafka|postgres|prometheus     stop one component, if we started it
#   deploy/local/stack.sh status                                one line per component
#   deploy/local/stack.sh fetch                                 only fetch the Kafka jars into the cache
#   deploy/local/stack.sh tools                                 only install kcat, openssl and java
#
# Runtime state (Kafka data, logs, pid files) lives in .local/ (git-ignored); the Kafka jars are
# cached under ${XDG_CACHE_HOME:-~/.cache}/voucherstream so a second run needs no network.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${VOUCHERSTREAM_STATE_DIR:-$ROOT/.local}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/voucherstream"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/deploy/local/kafka/pom.xml")"
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
KAFKA_HOST=127.0.0.1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-768m}"
PG_HOST=127.0.0.1
PG_PORT="${PG_PORT:-5432}"
PG_USER=voucherstream
PG_PASSWORD=voucherstream
PG_DB=voucherstream
PROM_PORT="${PROM_PORT:-9090}"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Marks a component as started by this project, so `down --started-only` stops only those.
mark_started() { mkdir -p "$STATE"; touch "$STATE/started.$1"; }
was_started() { [[ -f "$STATE/started.$1" ]]; }

APT_UPDATED=0
ensure_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $EUID -eq 0 ]] || die "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
  log "installing Debian packages: ${missing[*]}"
  if ((APT_UPDATED == 0)); then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------- Kafka

kafka_fetch() {
  if [[ -f "$KAFKA_LIBS/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || ensure_apt maven
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
  local tmp="$KAFKA_LIBS.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$CACHE"
  mvn -q -B -f "$ROOT/deploy/local/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime >"$CACHE/maven.log" 2>&1 \
    || { tail -30 "$CACHE/maven.log" >&2; die "could not fetch the Kafka jars with Maven (log: $CACHE/maven.log)"; }
  rm -rf "$KAFKA_LIBS" && mv "$tmp" "$KAFKA_LIBS" && touch "$KAFKA_LIBS/.complete"
}

kafka_java() {
  # The JVM flags of Kafka's bin/kafka-run-class.sh, trimmed for one small local node.
  KAFKA_JAVA=(java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
       -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
       -Djava.awt.headless=true
       -Dlog4j2.configurationFile="$ROOT/deploy/local/kafka/log4j2.yaml"
       -Dkafka.logs.dir="$STATE/kafka/logs"
       -cp "$KAFKA_LIBS/*" "$@")
}

kafka_config() {
  local dir="$STATE/kafka"
  mkdir -p "$dir/data" "$dir/logs"
  sed -e "s#@DATA@#$dir/data#" -e "s#@PORT@#$KAFKA_PORT#g" -e "s#@CPORT@#$KAFKA_CONTROLLER_PORT#g" \
      "$ROOT/deploy/local/kafka/server.properties" > "$dir/server.properties"
}

kafka_pid() { [[ -f "$STATE/kafka/pid" ]] && kill -0 "$(cat "$STATE/kafka/pid")" 2>/dev/null && cat "$STATE/kafka/pid"; }

kafka_ready() {
  command -v kcat >/dev/null || return 1
  kcat -b "$KAFKA_HOST:$KAFKA_PORT" -L -m 2 2>/dev/null | grep -q "1 brokers"
}

kafka_up() {
  ensure_apt kcat
  if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    if kafka_pid >/dev/null; then log "kafka: already running (pid $(kafka_pid))"; else log "kafka: a broker already answers on $KAFKA_HOST:$KAFKA_PORT; using it"; fi
    return 0
  fi
  command -v java >/dev/null || ensure_apt openjdk-17-jre-headless
  kafka_fetch
  kafka_config
  local dir="$STATE/kafka"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    local cluster_id
    kafka_java kafka.tools.StorageTool random-uuid
    cluster_id="$("${KAFKA_JAVA[@]}" 2>/dev/null | tail -1)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties"
    "${KAFKA_JAVA[@]}" >"$dir/logs/format.log" 2>&1 \
      || die "kafka: storage format failed, see $dir/logs/format.log"
    log "kafka: formatted KRaft storage (cluster $cluster_id)"
  fi
  local t0=$SECONDS
  kafka_java kafka.Kafka "$dir/server.properties"
  setsid nohup "${KAFKA_JAVA[@]}" >"$dir/logs/server.out" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  mark_started kafka
  for _ in $(seq 1 240); do
    if kafka_ready; then log "kafka: ready on $KAFKA_HOST:$KAFKA_PORT after $((SECONDS - t0)) s (pid $(cat "$dir/pid"))"; return 0; fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { tail -20 "$dir/logs/server.out" >&2; die "kafka: the broker exited, see $dir/logs/server.out"; }
    sleep 0.25
  done
  die "kafka: not ready after 60 s, see $dir/logs/server.out"
}

kafka_down() {
  local pid
  pid="$(kafka_pid)" || { rm -f "$STATE/started.kafka"; return 0; }
  log "kafka: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && { log "kafka: did not stop in 30 s, killing"; kill -KILL "$pid"; }
  rm -f "$STATE/kafka/pid" "$STATE/started.kafka"
}

kafka_status() {
  if kafka_ready; then echo "kafka       up    $KAFKA_HOST:$KAFKA_PORT  ${KAFKA_VERSION} $(kafka_pid >/dev/null && echo "pid $(kafka_pid)" || echo "(not ours)")"
  else echo "kafka       down  $KAFKA_HOST:$KAFKA_PORT"; fi
}

# ---------------------------------------------------------------- PostgreSQL

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

pg_cluster() { pg_lsclusters --no-header 2>/dev/null | awk -v p="$PG_PORT" '$3 == p {print $1, $2; exit}'; }

pg_up() {
  if command -v pg_isready >/dev/null && pg_ready; then
    log "postgres: already answering on $PG_HOST:$PG_PORT"
  else
    command -v pg_lsclusters >/dev/null || ensure_apt postgresql
    local cluster
    cluster="$(pg_cluster)"
    if [[ -z "$cluster" ]]; then
      local ver
      ver="$(ls /usr/lib/postgresql | sort -V | tail -1)"
      [[ -n "$ver" ]] || ensure_apt postgresql
      ver="$(ls /usr/lib/postgresql | sort -V | tail -1)"
      pg_createcluster "$ver" main --port "$PG_PORT" >/dev/null
      cluster="$ver main"
    fi
    log "postgres: starting cluster $cluster"
    # shellcheck disable=SC2086
    pg_ctlcluster $cluster start
    mark_started postgres
    echo "$cluster" > "$STATE/postgres.cluster"
    for _ in $(seq 1 120); do pg_ready && break; sleep 0.25; done
    pg_ready || die "postgres: not ready after 30 s"
    log "postgres: ready on $PG_HOST:$PG_PORT"
  fi
  pg_bootstrap
}

pg_bootstrap() {
  # Role and database, idempotent. Uses the local superuser over the Unix socket (peer auth).
  # The role owns the services' schemas and may create their own logins (`voucherstream db grant`).
  if [[ "$(PGPASSWORD="$PG_PASSWORD" psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -Atqc \
        'select rolcreaterole from pg_roles where rolname = current_user' 2>/dev/null)" == t ]]; then
    return 0
  fi
  id postgres >/dev/null 2>&1 || die "postgres: cannot log in as $PG_USER and there is no local 'postgres' user to create it"
  local as_pg=(runuser -u postgres --)
  [[ $EUID -eq 0 ]] || as_pg=(sudo -u postgres)
  "${as_pg[@]}" psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qAt >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD';
  END IF;
  ALTER ROLE $PG_USER CREATEROLE;
END \$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')\gexec
SQL
  log "postgres: role (may create roles) and database '$PG_DB' ready"
}

pg_down() {
  was_started postgres || return 0
  local cluster
  cluster="$(cat "$STATE/postgres.cluster" 2>/dev/null || pg_cluster)"
  log "postgres: stopping cluster $cluster"
  # shellcheck disable=SC2086
  pg_ctlcluster $cluster stop -m fast || true
  rm -f "$STATE/started.postgres" "$STATE/postgres.cluster"
}

pg_restart() {
  was_started postgres || die "postgres: not started by this project; refusing to restart it"
  local cluster
  cluster="$(cat "$STATE/postgres.cluster" 2>/dev/null || pg_cluster)"
  log "postgres: restarting cluster $cluster"
  # shellcheck disable=SC2086
  pg_ctlcluster $cluster restart -m fast
  for _ in $(seq 1 120); do pg_ready && break; sleep 0.25; done
  pg_ready || die "postgres: not ready after 30 s"
  log "postgres: ready on $PG_HOST:$PG_PORT"
}

pg_status() {
  if pg_ready; then echo "postgres    up    $PG_HOST:$PG_PORT  database $PG_DB $(was_started postgres && echo "(started here)" || echo "(not ours)")"
  else echo "postgres    down  $PG_HOST:$PG_PORT"; fi
}

# ---------------------------------------------------------------- Prometheus

prom_pid() { [[ -f "$STATE/prometheus/pid" ]] && kill -0 "$(cat "$STATE/prometheus/pid")" 2>/dev/null && cat "$STATE/prometheus/pid"; }

prom_up() {
  if port_open 127.0.0.1 "$PROM_PORT"; then log "prometheus: already answering on 127.0.0.1:$PROM_PORT"; return 0; fi
  command -v prometheus >/dev/null || ensure_apt prometheus
  local dir="$STATE/prometheus"
  mkdir -p "$dir/data"
  setsid nohup prometheus --config.file="$ROOT/deploy/prometheus/prometheus.local.yml" \
    --storage.tsdb.path="$dir/data" --web.listen-address="127.0.0.1:$PROM_PORT" \
    --web.enable-lifecycle >"$dir/prometheus.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  mark_started prometheus
  for _ in $(seq 1 120); do
    if port_open 127.0.0.1 "$PROM_PORT"; then log "prometheus: ready on 127.0.0.1:$PROM_PORT"; return 0; fi
    sleep 0.25
  done
  die "prometheus: not ready after 30 s, see $dir/prometheus.log"
}

prom_down() {
  local pid
  pid="$(prom_pid)" || { rm -f "$STATE/started.prometheus"; return 0; }
  log "prometheus: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$STATE/prometheus/pid" "$STATE/started.prometheus"
}

prom_status() {
  if port_open 127.0.0.1 "$PROM_PORT"; then echo "prometheus  up    127.0.0.1:$PROM_PORT $(prom_pid >/dev/null && echo "pid $(prom_pid)" || echo "(not ours)")"
  else echo "prometheus  down  127.0.0.1:$PROM_PORT"; fi
}

# ---------------------------------------------------------------- main

cmd="${1:-status}"; shift || true
components=("$@")
((${#components[@]})) || components=(kafka postgres prometheus)

case "$cmd" in
  up)
    mkdir -p "$STATE"
    for c in "${components[@]}"; do
      case "$c" in
        kafka) kafka_up ;; postgres) pg_up ;; prometheus) prom_up ;;
        *) die "unknown component '$c' (kafka, postgres, prometheus)" ;;
      esac
    done ;;
  down)
    # Stops only what this project started; a server that was already running is left alone.
    prom_down; kafka_down; pg_down ;;
  down-one)
    for c in "${components[@]}"; do
      case "$c" in kafka) kafka_down ;; postgres) pg_down ;; prometheus) prom_down ;; esac
    done ;;
  restart)
    # Only what this project started (the fault-tolerance run restarts the broker and database).
    for c in "${components[@]}"; do
      case "$c" in
        kafka) was_started kafka || die "kafka: not started by this project; refusing to restart it"
               kafka_down; kafka_up ;;
        postgres) pg_restart ;;
        prometheus) prom_down; prom_up ;;
        *) die "unknown component '$c' (kafka, postgres, prometheus)" ;;
      esac
    done ;;
  status) kafka_status; pg_status; prom_status ;;
  fetch) kafka_fetch ;;
  tools) ensure_apt kcat openssl; command -v java >/dev/null || ensure_apt openjdk-17-jre-headless ;;
  *) die "usage: $0 up [kafka|postgres|prometheus ...] | down | down-one C... | restart C... | status | fetch | tools" ;;
esac

#!/usr/bin/env bash
# `make run`: the local stack, the topics, then every service that exists, as native processes.
# Logs go to .local/logs/<service>.log; Ctrl-C stops the services it started (the stack stays up:
# `make down` stops it).
set -uo pipefail
PY="${1:?usage: deploy/local/run.sh PYTHON}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
LOGS=.local/logs
mkdir -p "$LOGS"
SERVICES=()
for s in consent segmentation issuance analytics; do
  [[ -f "services/$s/__main__.py" ]] && SERVICES+=("$s")
done

deploy/local/stack.sh up || exit 1
"$PY" -m shared.topics >/dev/null || { echo "[run] could not create the topics" >&2; exit 1; }
echo "[run] topics ready"
# Each service logs in as its own role, which can use only its own schema's rows (the schemas are
# migrated here, by their owner; docs/operations.md, "Database roles").
PRIVACY=$(IFS=,; echo "${SERVICES[*]}")
"$PY" -m voucherstream.cli db migrate --services "$PRIVACY" >"$LOGS/db.log" 2>&1 \
  || { echo "[run] could not migrate the schemas; see $LOGS/db.log" >&2; exit 1; }
for s in "${SERVICES[@]}"; do
  password="voucherstream-local-$s"  # the local stack only: real deployments keep theirs in a secret store
  VOUCHERSTREAM_DB_ROLE_PASSWORD="$password" "$PY" -m voucherstream.cli db grant "$s" >>"$LOGS/db.log" 2>&1 \
    || { echo "[run] could not grant the $s role; see $LOGS/db.log" >&2; exit 1; }
  export "${s^^}_POSTGRES_DSN=postgresql://voucherstream_$s:$password@127.0.0.1:5432/voucherstream?sslmode=disable"
done
echo "[run] schemas migrated; each service has its own database role"

PIDS=()
stop() {
  echo
  echo "[run] stopping ${SERVICES[*]}"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  echo "[run] stopped; the stack is still up (make down stops it)"
  exit 0
}
trap stop INT TERM

declare -A PORT=([consent]=8001 [segmentation]=8002 [issuance]=8003 [analytics]=8004)
for s in "${SERVICES[@]}"; do
  CONSENT_PRIVACY_SERVICES="$PRIVACY" "$PY" -m "services.$s" >"$LOGS/$s.log" 2>&1 &
  PIDS+=($!)
done
for s in "${SERVICES[@]}"; do
  for _ in $(seq 1 150); do
    curl -fs "http://127.0.0.1:${PORT[$s]}/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  if curl -fs "http://127.0.0.1:${PORT[$s]}/readyz" >/dev/null 2>&1; then
    echo "[run] $s ready on http://127.0.0.1:${PORT[$s]}  (API docs: /docs, metrics: /metrics, log: $LOGS/$s.log)"
  else
    echo "[run] $s did not become ready; see $LOGS/$s.log" >&2
    stop
  fi
done
KEY=$("$PY" -m voucherstream.cli keys create --name "demo-$(date +%s)" --scopes checkout,onsite,marketing,consent:write,privacy:admin,profiles:read --quiet) \
  || { echo "[run] could not create the demo API key" >&2; stop; }
echo "[run] demo API key (all scopes, shown once): $KEY"
VOUCHERSTREAM_API_KEY="$KEY" "$PY" -m voucherstream.cli campaigns load deploy/campaigns/reference.yaml 2>&1 | sed 's/^/[run] campaign /'
echo "[run] all services healthy after $SECONDS s; starting the shop simulator and the live view"
trap '' INT  # the simulator handles Ctrl-C itself; then the services are stopped below
"$PY" -m tools.demo --key "$KEY" ${DEMO_ARGS:-}
trap stop INT TERM
stop

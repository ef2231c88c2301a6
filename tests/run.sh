#!/usr/bin/env bash
# `make test`: starts the parts of the local stack the suite needs, runs it, and stops exactly
# what it started (a broker or database that was already running is left running).
# `tests/run.sh PYTHON module args...` runs `python -m module args...` the same way (make chaos).
set -uo pipefail
PY="${1:?usage: tests/run.sh PYTHON [module args...]}"
shift
cd "$(dirname "$0")/.."
STATE=.local
mkdir -p "$STATE"
before=$(ls "$STATE"/started.* 2>/dev/null | sort)
cluster_before=$(deploy/local/cluster.sh status 2>/dev/null | grep -c " up " || true)

cleanup() {
  local after
  after=$(ls "$STATE"/started.* 2>/dev/null | sort)
  for marker in $after; do
    if ! grep -qx "$marker" <<<"$before"; then
      case "$marker" in
        *kafka) deploy/local/stack.sh down-one kafka ;;
        *postgres) deploy/local/stack.sh down-one postgres ;;
        *prometheus) deploy/local/stack.sh down-one prometheus ;;
      esac
    fi
  done
  # The cluster tests stop the secured cluster they started; this covers an interrupted run.
  if [[ "$cluster_before" == 0 ]] && deploy/local/cluster.sh status 2>/dev/null | grep -q " up "; then
    deploy/local/cluster.sh down
  fi
}
trap cleanup EXIT

t0=$SECONDS
deploy/local/stack.sh up kafka postgres prometheus || exit 1
echo "[test] stack ready in $((SECONDS - t0)) s"
if (($#)); then
  "$PY" -m "$@"
else
  # shellcheck disable=SC2086
  "$PY" -m pytest -q -p no:cacheprovider --durations=25 ${PYTEST_ARGS:-}
fi
status=$?
echo "[test] finished in $((SECONDS - t0)) s with exit code $status"
exit $status

#!/usr/bin/env bash
# The schemas the chart's custom resources are checked against (make test): the CRDs of KEDA and
# of the prometheus-operator, taken from the projects' own Go modules through the Go module proxy
# and cached in DIR.   usage: deploy/helm/crds.sh DIR KEDA_VERSION PROMETHEUS_OPERATOR_VERSION
set -euo pipefail
out=${1:?usage: crds.sh DIR KEDA_VERSION PROMETHEUS_OPERATOR_VERSION}
keda=${2:?} promop=${3:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

module_dir() {  # the module's unpacked source in Go's module cache
  (cd "$tmp" && go mod download -json "$1") | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if "Error" in d else print(d["Dir"])'
}

mkdir -p "$tmp/crds"
cp "$(module_dir "github.com/kedacore/keda/v2@$keda")"/config/crd/bases/keda.sh_*.yaml "$tmp/crds/"
cp "$(module_dir "github.com/prometheus-operator/prometheus-operator@$promop")"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml "$tmp/crds/"
rm -rf "$out" && mkdir -p "$(dirname "$out")" && mv "$tmp/crds" "$out"
echo "[make] CRD schemas of KEDA $keda and prometheus-operator $promop in $out"

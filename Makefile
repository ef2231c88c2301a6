# Voucherstream — the two commands that matter: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
CACHE  ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/voucherstream
# The virtualenv lives in the user's cache, keyed by the lock file and the Python version, so a
# fresh clone with the same lock reuses it (and pip's wheel cache makes a new one quick).
VENV_KEY := $(shell cat requirements.lock pyproject.toml 2>/dev/null | $(PYTHON) -c "import sys,hashlib; print(hashlib.sha256(sys.stdin.buffer.read()+sys.version.encode()).hexdigest()[:12])")
VENV   ?= $(CACHE)/venv-$(VENV_KEY)
PY     := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
# The local stack runs with the built-in development secrets; real deployments set their own
# (docs/operations.md, "Secrets") and leave this unset.
export VOUCHERSTREAM_ENVIRONMENT ?= development
STACK  := deploy/local/stack.sh

.PHONY: help venv up down status topics run chaos scale-out cluster-up cluster-down bench bench-smoke bench-privacy bench-memory bench-consent bench-issuance bench-segmentation bench-checkout bench-freshness bench-pipeline dashboards helm-files helm-check test test-races test-unit lock compose-config clean

help: ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# No prerequisites: the path already carries a hash of requirements.lock and pyproject.toml, so a
# fresh clone (newer file times) reuses the cached virtualenv instead of reinstalling it.
$(VENV)/.installed:
	@echo "[make] creating the virtualenv $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	@$(VENV)/bin/pip install -q -c requirements.lock -r <($(PYTHON) -c "import tomllib;d=tomllib.load(open('pyproject.toml','rb'))['project'];print('\n'.join(d['dependencies']+d['optional-dependencies']['dev']))")
	@touch $@

venv: $(VENV)/.installed ## install the Python dependencies (cached) and the voucherstream command (.venv/bin)
	@ln -sfn $(VENV) .venv
	@install -m 755 deploy/local/voucherstream.sh $(VENV)/bin/voucherstream

up: ## start Kafka, PostgreSQL and Prometheus natively (idempotent)
	@$(STACK) up

down: ## stop what `make up` started
	@$(STACK) down

status: ## what is running
	@$(STACK) status

topics: venv ## create or update every registry topic (idempotent)
	@$(PY) -m shared.topics

run: venv ## the main job: the local stack, the topics, then the services (Ctrl-C stops them)
	@deploy/local/run.sh $(PY)

bench-consent: venv ## consent propagation p50/p99 at 500 changes/s (the consent issue's bar: p99 < 200 ms)
	@$(STACK) up kafka postgres
	@$(PY) -m bench.consent_propagation --rate 500 --seconds 30

bench-issuance: venv ## vouchers/s at saturation and p50/p99 at 1,000 events/s, next to raw PostgreSQL inserts
	@$(STACK) up kafka postgres
	@$(PY) -m bench.issuance --saturation 20000 --rate 1000 --seconds 15

bench-segmentation: venv ## events/s of one segmentation worker (carts, each a trigger) next to a raw aiokafka consume
	@$(STACK) up kafka postgres
	@$(PY) -m bench.segmentation --events 50000 --customers 5000

VEGETA := $(CACHE)/bin/vegeta
$(VEGETA):
	@echo "[make] installing vegeta (a constant-rate HTTP load generator) from the Go module proxy"
	@GOBIN=$(CACHE)/bin go install github.com/tsenart/vegeta/v12@v12.12.0

# The chart's offline checks (make test): helm built from its Go module, and the CRD schemas of
# KEDA and the prometheus-operator from theirs; both cached, versioned by path.
HELM_VERSION := v3.22.0
HELM := $(CACHE)/helm-$(HELM_VERSION)/helm
$(HELM):
	@echo "[make] building helm $(HELM_VERSION) from its Go module (once; about 2.5 min on 2 cores)"
	@GOBIN=$(dir $(HELM)) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
CRDS := $(CACHE)/crds-keda-v2.18.0-promop-v0.85.0
$(CRDS):
	@deploy/helm/crds.sh $@ v2.18.0 v0.85.0
# docker-compose.yml loaded by compose-go, the library `docker compose` itself loads it with
# (the path carries a hash of its source, so a fresh clone reuses the cached build).
COMPOSE_CHECK := $(CACHE)/compose-check-$(shell cat deploy/compose-check/go.sum deploy/compose-check/main.go | sha256sum | cut -c1-12)/compose-check
$(COMPOSE_CHECK):
	@echo "[make] building compose-check (compose-spec/compose-go) from the Go module proxy"
	@cd deploy/compose-check && go build -o $@ .
export VOUCHERSTREAM_HELM := $(HELM)
export VOUCHERSTREAM_COMPOSE_CHECK := $(COMPOSE_CHECK)
export VOUCHERSTREAM_CRDS := $(CRDS)

helm-files: venv ## regenerate the chart's consumer groups (deploy/helm/voucherstream/files/consumers.yaml) from the topic registry
	@$(PY) -m deploy.helm

helm-check: venv $(HELM) $(CRDS) ## helm lint, helm template and every rendered manifest against the Kubernetes, KEDA and prometheus-operator schemas
	@$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_helm_chart.py

bench-checkout: venv $(VEGETA) ## validate/redeem p50/p99 at 1,000 req/s (native and Voucherify routes) and the max rate, next to /healthz and pgbench; then the same beside the whole stack as make run runs it
	@$(STACK) up kafka postgres
	@PATH="$$PATH:$$(ls -d /usr/lib/postgresql/*/bin | tail -1)" $(PY) -m bench.checkout --rate 1000 --seconds 10 --workers 1
	@$(PY) -m bench.checkout --rate 1000 --seconds 10 --workers 1 --stack 50

bench-pipeline: venv ## the whole pipeline: shop events/s end to end and event-to-delivery p50/p99 at 1,000/s
	@$(STACK) up kafka postgres
	@$(PY) -m bench.pipeline --saturation 10000 --rate 1000 --seconds 10

bench: venv $(VEGETA) ## everything measured against this machine's limits in one run (~12 min); writes docs/benchmarks.md and the README table
	@bash tests/run.sh $(PY) bench.all --write-docs

bench-smoke: venv $(VEGETA) ## every benchmark step at tiny sizes (~2 min; part of make test)
	@bash tests/run.sh $(PY) bench.all --smoke

bench-privacy: venv ## what sealing personal fields costs, and 100 concurrent erasures under 200 carts/s (p50/p99, the budget)
	@bash tests/run.sh $(PY) bench.privacy --erasures 100 --load-rate 200 --seconds 20

bench-memory: venv ## each service's memory through 1,000,000 shop events (~8 min)
	@bash tests/run.sh $(PY) bench.memory --events 1000000 --customers 100000

bench-freshness: venv ## a redemption -> analytics /metrics and budget-counters, p50/p99
	@$(STACK) up kafka postgres
	@$(PY) -m bench.freshness --redemptions 30

dashboards: venv ## regenerate the Grafana dashboards (deploy/grafana/dashboards/*.json) from their code
	@$(PY) -m deploy.grafana.dashboards

test: venv $(VEGETA) $(HELM) $(CRDS) $(COMPOSE_CHECK) ## the whole suite on the real stack; starts what it needs and stops what it started
	@bash tests/run.sh $(PY)

chaos: venv ## 30 min of faults under load (36 kill -9, broker and PostgreSQL restarts...), then 5 min at 500/s on the secured cluster with 3 broker kills; every check; report in docs/reliability.md
	@bash tests/run.sh $(PY) tests.chaos.harness --minutes $(or $(CHAOS_MINUTES),30) --report docs/reliability.md
	@bash tests/run.sh $(PY) tests.chaos.harness --cluster --rate 500 --minutes $(or $(CLUSTER_CHAOS_MINUTES),5) --broker-kills 3 --report docs/reliability.md

scale-out: venv ## what KEDA does, with processes: a backlog, then 1, 2 and 3 instances of segmentation and issuance under load; rates per phase and every chaos check (docs/reliability.md)
	@bash tests/run.sh $(PY) tests.chaos.scale_out --report docs/reliability.md

cluster-up: venv ## a secured three-broker Kafka on loopback (TLS, SCRAM logins, registry ACLs, 3 replicas); `deploy/local/cluster.sh env NAME` prints a login
	@deploy/local/cluster.sh up $(PY)

cluster-down: ## stop the three brokers (`deploy/local/cluster.sh clean` also removes their data, certificates and passwords)
	@deploy/local/cluster.sh down

test-races: venv ## the checkout races at full length: 200 concurrent redemptions of one code, 100 rounds
	@$(STACK) up kafka postgres
	@CHECKOUT_RACE_ROUNDS=100 $(PY) -m pytest -q tests/integration/issuance/test_checkout_concurrency.py

test-unit: venv ## only the unit tests (no Kafka, no PostgreSQL)
	@$(PY) -m pytest tests/unit -q

lock: ## regenerate requirements.lock from pyproject.toml
	@rm -rf $(CACHE)/lock-venv && $(PYTHON) -m venv $(CACHE)/lock-venv
	@$(CACHE)/lock-venv/bin/pip install -q ".[dev]" && $(CACHE)/lock-venv/bin/pip freeze --exclude voucherstream \
	  | sed '1i # Locked transitive set for `pip install -c requirements.lock`. Regenerate with `make lock`.' > requirements.lock

compose-config: ## validate docker-compose.yml with the variables of this shell (docker compose config, or the same loader without Docker)
	@if docker compose version >/dev/null 2>&1; then docker compose config -q; \
	 else $(MAKE) -s $(COMPOSE_CHECK) && $(COMPOSE_CHECK) docker-compose.yml >/dev/null; fi && echo "docker-compose.yml is valid"

clean: ## remove local runtime state (Kafka data, logs); keeps the caches
	@$(STACK) down
	@rm -rf .local

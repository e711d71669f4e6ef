# Octo STS — the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN_STAMP := service/octosts/_gen/__init__.py
PYTEST_ARGS ?=

.PHONY: help install system-deps proto test test-py test-go test-ts test-image client-deps ratelimit clients unit lint fmt run bench bench-image fuzz clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# xds-protos ships its own (older) opentelemetry/proto modules over opentelemetry-proto's;
	@# reinstalling the latter restores what the OTLP exporter imports (tests/unit/test_imports.py).
	$(PY) -m pip install --quiet --force-reinstall --no-deps opentelemetry-proto==1.45.2
	touch $@

$(GEN_STAMP): $(STAMP) $(shell find proto -name '*.proto') scripts/gen_protos.py
	$(PY) scripts/gen_protos.py

install: $(STAMP) $(GEN_STAMP) ## create .venv, install the package with dev extras, generate code

proto: $(STAMP) ## regenerate Python code and the Envoy descriptor set from proto/
	$(PY) scripts/gen_protos.py

run: install ## start issuer + GitHub emulator + 2 STS replicas + Envoy on https://localhost:8443 and show an exchange
	$(VENV)/bin/octo-sts dev stack --workdir .run

system-deps: ## Debian packages the tests use (prometheus, docker-compose, podman, ...); root only
	@scripts/install-system-deps.sh

test: test-py test-go test-ts ## run every test: Python (unit, integration, e2e, container images), Go and TypeScript clients

test-py: install system-deps client-deps ratelimit ## Python tests (unit, integration with real sockets, e2e with real Envoy and images)
	$(PY) -m pytest $(PYTEST_ARGS)

ratelimit: ## build the Envoy rate-limit service (Go, pinned) into .tools/bin (per-tenant limits)
	@scripts/install-ratelimit.sh

client-deps: ## Go modules and Node packages the live client tests use
	cd clients/go && go mod download
	@# The real chainguard.dev/sdk (tests/e2e/test_chainguard_sdk_live.py): compiled here, once.
	cd tests/e2e/chainguard_sdk && go mod download && go test -count=1 -run '^$$' . >/dev/null
	cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error
	@# The real Octokit (@octokit/rest) against the egress gateway (tests/e2e/test_egress_gateway.py).
	cd tests/e2e/octokit && npm ci --no-audit --no-fund --loglevel=error

# The Helm chart's tests (tests/integration/test_helm_chart.py) run the pinned Helm.
.PHONY: helm
test-py: helm
helm: ## build Helm (pinned) into .tools/bin once (a no-op afterwards)
	@scripts/install-helm.sh >/dev/null

# Also part of `make test` (test-py); the images' layer cache is kept in .cache/oci.
test-image: install system-deps ## only the image tests: build the sts + envoy images (podman, local Debian base), exchange through them
	$(PY) -m pytest tests/e2e/test_image.py $(PYTEST_ARGS)

test-go: client-deps ## Go client tests
	cd clients/go && go test ./...

test-ts: client-deps ## TypeScript client tests
	cd clients/typescript && npm test

clients: install ## regenerate the Go and TypeScript clients (committed; CI fails on drift)
	scripts/gen_clients.sh

unit: install ## run only the fast unit tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install ## ruff + mypy --strict on hand-written code
	$(VENV)/bin/ruff check service tests scripts bench
	$(VENV)/bin/ruff format --check service tests scripts bench
	$(VENV)/bin/mypy

fmt: install ## apply ruff's formatter and fixes
	$(VENV)/bin/ruff format service tests scripts bench
	$(VENV)/bin/ruff check --fix service tests scripts bench

bench: install system-deps ## run the benchmarks; prints tables and writes bench/results.json
	$(PY) bench/exchange.py
	$(PY) bench/gateway.py
	$(PY) bench/overhead.py
	$(PY) bench/hostile_verify.py
	$(PY) bench/egress.py
	$(PY) bench/apps.py
	$(PY) bench/perf.py
	$(PY) bench/edge_deny.py
	$(PY) bench/workers.py
	$(PY) bench/resilience.py
	$(PY) bench/fleet.py

FUZZ_SECONDS ?= 60
fuzz: install ## fuzz every parser FUZZ_SECONDS each (atheris); finds in .fuzz/ (docs/fuzzing.md)
	$(PY) -m tests.fuzz.run all --seconds $(FUZZ_SECONDS)
	OCTOSTS_FUZZ_EXAMPLES=20000 $(PY) -m pytest -q -p no:randomly --timeout=0 tests/fuzz/test_slash_guard_property.py

bench-image: install system-deps ## build the images from a local Debian base; sizes and start-up times
	$(PY) bench/image.py

clean: ## remove the venv and generated files
	rm -rf $(VENV) build service/octosts/_gen .pytest_cache .mypy_cache .ruff_cache .cache

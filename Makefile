# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LATEST := .venv-latest
SUITE_ENV := PYTHONPATH=$(CURDIR)/src:$(CURDIR)

.PHONY: run test test-latest unit e2e lint typecheck bench check clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

## Start the bundled example gateway with local demo backends.
run: $(STAMP)
	$(BIN)/python examples/run_demo.py

## The whole suite: lint, types, import contracts, every test under trial
## (two processes), then the unit tests again under pytest.
## The end-to-end tests (tests/e2e) run once, under trial: they start real
## processes and are most of the time; pytest-twisted, the runner most
## contributors use, is kept honest on the unit tests.  Any failure of
## either runner fails `make test` (pytest's "no tests collected", exit 5,
## fails it too: the unit tests must be collectable by pytest).
## Measured on the 2-core dev machine with five other sessions' load
## (load average 6-7): 3 min 27 s for the whole target (trial -j2, 854
## tests: 152 s; pytest, 736 unit tests: 48 s); 1 min 59 s to the end of
## trial in a quieter run.  Before: ~5 min, every test run twice.
test: $(STAMP)
	bash scripts/ensure-redis.sh
	bash scripts/ensure-chromium.sh
	$(BIN)/ruff check src tests examples bench scripts
	$(BIN)/mypy
	$(SUITE_ENV) $(BIN)/lint-imports --no-cache
	$(SUITE_ENV) $(BIN)/python -m twisted.trial -j2 --temp-directory=/tmp/_trial_temp_txgw tests
	$(SUITE_ENV) $(BIN)/python -m pytest -q --ignore=tests/e2e tests

## The whole suite in a separate venv against the newest releases on the
## package index, pre-releases included, ignoring setup.cfg's upper bounds:
## an upgrade of Twisted (or treq, prometheus-client) is decided
## on this evidence.  Prints the versions it ran against.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --pre -U $$($(PYTHON) scripts/unbounded-requirements.py)
	$(LATEST)/bin/python -m pip install -q --no-deps -e .
	$(LATEST)/bin/python -c 'from importlib.metadata import version as v; print(*(f"{n} {v(n)}" for n in ("twisted", "treq", "prometheus-client", "pyopenssl")), sep="; ")'
	bash scripts/ensure-redis.sh
	$(SUITE_ENV) $(LATEST)/bin/python -m twisted.trial -j2 --temp-directory=/tmp/_trial_temp_txgw_latest tests

check: $(STAMP)
	$(BIN)/python -m txgateway check examples/gw.yaml

bench: $(STAMP)
	$(BIN)/python bench/run.py

## HTTP/2 clients (h2load, many streams per connection) through the gateway;
## figures in docs/performance.md, section HTTP/2.  make test never needs h2load.
.PHONY: bench-http2 ensure-h2load
bench-http2: $(STAMP) ensure-h2load
	$(BIN)/python bench/http2.py

ensure-h2load:
	@command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq nghttp2-client)

clean:
	rm -rf $(VENV) $(LATEST) build dist src/*.egg-info _trial_temp*

# -- The targets go-reverse-proxy's users run (docs/migrating.md).
.PHONY: docker-build helm-template helm-install load-test
DOCKER ?= docker
IMAGE ?= txgateway:0.1.0
RELEASE ?= txgateway
HELM ?= $(shell command -v helm 2>/dev/null || echo $(VENV)/tools/helm)
LOAD_USERS ?= 20
LOAD_SECONDS ?= 10
LOAD_ARGS ?=

## Build the container image (needs a running docker engine; DOCKER=podman works too).
docker-build:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make docker-build: '$(DOCKER)' is not installed; install Docker (or run with DOCKER=podman)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make docker-build: no docker engine answers ('$(DOCKER) info' failed): start the daemon (or minikube: eval \$$(minikube docker-env))" >&2; exit 1; }
	$(DOCKER) build -t $(IMAGE) .

## Render the Helm chart (no cluster needed).
helm-template:
	@test -x "$(HELM)" || bash scripts/ensure-helm.sh
	$(HELM) template $(RELEASE) deploy/helm/txgateway

## Install (or upgrade) the chart into the current kubectl context; without a cluster use helm-template.
helm-install:
	@test -x "$(HELM)" || bash scripts/ensure-helm.sh
	@kubectl version >/dev/null 2>&1 || { echo "make helm-install: no Kubernetes cluster answers (kubectl version failed); 'make helm-template' renders the chart without one" >&2; exit 1; }
	$(HELM) upgrade --install $(RELEASE) deploy/helm/txgateway --wait

## A bounded load run (LOAD_USERS users for LOAD_SECONDS s, 127.0.0.1 only) against the demo, with a summary.
load-test: $(STAMP)
	$(BIN)/python bench/load.py --users $(LOAD_USERS) --seconds $(LOAD_SECONDS) $(LOAD_ARGS)

# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit e2e lint typecheck bench check clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

## Start the bundled example gateway with local demo backends.
run: $(STAMP)
	$(BIN)/python examples/run_demo.py

## The whole suite: lint, types, then every test under trial and under pytest.
test: $(STAMP)
	bash scripts/ensure-redis.sh
	bash scripts/ensure-chromium.sh
	$(BIN)/ruff check src tests examples bench scripts
	$(BIN)/mypy
	$(BIN)/python -m twisted.trial --temp-directory=/tmp/_trial_temp_txgw tests
	$(BIN)/python -m pytest -q tests

check: $(STAMP)
	$(BIN)/python -m txgateway check examples/gw.yaml

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info _trial_temp*

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

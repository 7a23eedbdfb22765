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

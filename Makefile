# `make demo` and `make test` do all set-up themselves (virtualenv, packages, data).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint validate bench clean install

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml constraints.txt package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]" -c constraints.txt
	npm ci --no-audit --no-fund --silent
	touch $(STAMP)

data/breast_cancer.csv data/friedman1.csv: | $(STAMP)
	$(BIN)/python scripts/make_example_data.py

demo: $(STAMP) data/breast_cancer.csv
	$(BIN)/sagegate run models/breast-cancer.yaml
	$(BIN)/sagegate runs
	$(BIN)/sagegate models

lint: $(STAMP)
	$(BIN)/ruff check pipelines containers tests benchmarks scripts
	$(BIN)/ruff format --check pipelines containers tests benchmarks scripts

# The gate's ASL through both validators (npm asl-validator, PyPI statelint).
validate: $(STAMP)
	mkdir -p build
	$(BIN)/sagegate gate definition > build/gate.asl.json
	node_modules/.bin/asl-validator --json-path build/gate.asl.json
	$(BIN)/statelint build/gate.asl.json

test: $(STAMP) data/breast_cancer.csv data/friedman1.csv lint validate
	$(BIN)/pytest

bench: $(STAMP) data/breast_cancer.csv
	$(BIN)/python benchmarks/e2e.py

clean:
	rm -rf .sagegate

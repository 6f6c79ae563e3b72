# `make demo` and `make test` do all set-up themselves (virtualenv, packages, data).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint validate scan bench clean install browser

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml constraints.txt package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]" -c constraints.txt
	# bytecode for the editable package, as pip writes for installed ones (no one writes it where
	# PYTHONDONTWRITEBYTECODE is set: each command would compile ~50 ms of sources at every start)
	$(BIN)/python -m compileall -q pipelines
	npm ci --no-audit --no-fund --silent
	touch $(STAMP)

data/breast_cancer.csv data/friedman1.csv: | $(STAMP)
	$(BIN)/python scripts/make_example_data.py

demo: $(STAMP) data/breast_cancer.csv data/friedman1.csv
	$(BIN)/sagegate run models/breast-cancer.yaml
	$(BIN)/sagegate runs
	$(BIN)/sagegate models
	$(BIN)/sagegate executions
	mkdir -p .sagegate && sed -n '2,4p' data/breast_cancer.csv | cut -d, -f1-30 > .sagegate/demo-rows.csv
	$(BIN)/sagegate invoke sagegate-development-breast-cancer-serverless --file .sagegate/demo-rows.csv --probabilities
	$(BIN)/sagegate endpoints
	# drift monitoring on the realtime example (data capture on): clean traffic, then one shifted feature
	$(BIN)/sagegate run models/friedman1.yaml
	since=$$(date -u +%Y-%m-%dT%H:%M:%SZ) && $(BIN)/python scripts/demo_traffic.py --rows 500 \
	  && $(BIN)/sagegate monitor run --endpoint sagegate-development-friedman1-realtime --since $$since
	since=$$(date -u +%Y-%m-%dT%H:%M:%SZ) && $(BIN)/python scripts/demo_traffic.py --rows 500 --seed 102 --shift x3=0.5 \
	  && { $(BIN)/sagegate monitor run --endpoint sagegate-development-friedman1-realtime --since $$since \
	  || test $$? -eq 1; }  # exit 1: violations found, as this traffic should
	$(BIN)/sagegate monitor show sagegate-development-friedman1-realtime
	$(BIN)/sagegate gateway stop

lint: $(STAMP)
	$(BIN)/ruff check pipelines containers lambdas tests benchmarks scripts
	$(BIN)/ruff format --check pipelines containers lambdas tests benchmarks scripts

SCANNERS := .venv-scanners
SCAN_STAMP := $(SCANNERS)/.installed-stamp

$(SCAN_STAMP): scanners-requirements.txt scanners-constraints.txt
	test -x $(SCANNERS)/bin/python || $(PYTHON) -m venv $(SCANNERS)
	$(SCANNERS)/bin/python -m pip install --quiet --upgrade pip
	$(SCANNERS)/bin/python -m pip install --quiet -r scanners-requirements.txt -c scanners-constraints.txt
	touch $(SCAN_STAMP)

# Templates: cfn-lint (+ serverless rules) on the sources; checkov and cfripper on every template
# rendered for every environment (what each environment really gets). Suppressions carry reasons:
# checkov in each resource's Metadata, cfripper in cloudformation/cfripper-filters/.
scan: $(STAMP) $(SCAN_STAMP)
	$(BIN)/cfn-lint --append-rules cfn_lint_serverless.rules -- cloudformation/*.yaml
	rm -rf build/cloudformation
	$(BIN)/python -m pipelines.templates build/cloudformation > /dev/null
	$(SCANNERS)/bin/checkov -d build/cloudformation --framework cloudformation --skip-download --compact --quiet
	for template in build/cloudformation/*/*.json; do \
	  $(SCANNERS)/bin/cfripper $$template --resolve --rules-filters-folder cloudformation/cfripper-filters \
	    --format txt > build/cfripper.out 2>&1 || { echo "cfripper: $$template"; grep -A30 "Issues found" build/cfripper.out; exit 1; }; \
	done
	@echo "cfripper: no findings on $$(ls build/cloudformation/*/*.json | wc -l) rendered templates"

# The gate's ASL through both validators (npm asl-validator, PyPI statelint).
validate: $(STAMP)
	mkdir -p build
	$(BIN)/sagegate gate definition > build/gate.asl.json
	node_modules/.bin/asl-validator --json-path build/gate.asl.json
	$(BIN)/statelint build/gate.asl.json

# Debian's Chromium for the console's browser tests (tests/test_console.py)
browser:
	@test -x /usr/bin/chromium || scripts/install_browser.sh

test: $(STAMP) data/breast_cancer.csv data/friedman1.csv lint validate scan browser
	$(BIN)/pytest

# Ratios within one sweep (never timed assertions in tests): ~17 min on 2 cores.
bench: $(STAMP) data/breast_cancer.csv
	$(BIN)/python benchmarks/e2e.py --history 20
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/tuning.py
	$(BIN)/python benchmarks/tuning.py --rows 20000
	$(BIN)/python benchmarks/storage.py
	$(BIN)/python benchmarks/monitor.py
	$(BIN)/python benchmarks/shadow.py

clean:
	rm -rf .sagegate

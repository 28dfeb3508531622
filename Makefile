# The two commands of the README, plus helpers. Every target installs first
# (infra/install.sh returns in about a second when .venv is up to date).
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/recsys/demo.yaml
# Tests read the shared datasets from here (CI has ../shared beside the clone).
export GENREC_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup demo serve test lint format clean

setup:
	@bash infra/install.sh

## Main job end to end on the embedded default (generated data, local stores).
demo: setup
	$(PY) -m pipelines.recsys $(CONFIG)

## Serve the demo's champion on 127.0.0.1:8000 (run `make demo` first); Ctrl-C stops.
## A fresh local Ray unless RAY_ADDRESS names a cluster: a bare `serve run` joins whatever
## /tmp/ray/ray_current_cluster names, even a cluster long gone.
serve: setup
	$(VENV)/bin/serve run --address "$${RAY_ADDRESS:-local}" infra/serve.yaml

## Lint, then every test that can run on this machine.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf runs .pytest_cache .ruff_cache

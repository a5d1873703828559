# Two entry points: `make run` (the demo on embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: run test lint bench clean migrate server bootstrap deploy worker

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/lifecycle demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -n 3 --dist loadgroup

# Every benchmark runs even when an earlier one misses a target; make fails if any missed.
BENCHMARKS := $(sort $(wildcard benchmarks/[a-z]*.py))
bench: $(STAMP)
	@status=0; for script in $(BENCHMARKS); do \
		echo "== $$script"; $(BIN)/python $$script || status=1; \
	done; exit $$status

# From nothing to running (deployments/OPERATIONS.md): each step in its own terminal or service.
# PREFECT_API_URL and LIFECYCLE_* come from the environment.
migrate: $(STAMP)
	$(BIN)/lifecycle migrate

server: $(STAMP)
	$(BIN)/prefect server start

bootstrap: $(STAMP)
	$(BIN)/python -m deployments.bootstrap

deploy: $(STAMP)
	$(BIN)/prefect --no-prompt deploy --all

worker: $(STAMP)
	$(BIN)/prefect worker start --pool lifecycle

clean:
	rm -rf $(VENV) .lifecycle

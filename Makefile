# Two entry points: `make run` (the demo on embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: run test lint bench clean

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
	$(BIN)/pytest

# Every benchmark runs even when an earlier one misses a target; make fails if any missed.
BENCHMARKS := $(sort $(wildcard benchmarks/[a-z]*.py))
bench: $(STAMP)
	@status=0; for script in $(BENCHMARKS); do \
		echo "== $$script"; $(BIN)/python $$script || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) .lifecycle

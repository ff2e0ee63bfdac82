PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast lint demo bench clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install -e '.[dev]'

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench:
	$(BIN)/python scripts/bench_dcls.py --json docs/bench_dcls.json

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast test-slurm lint demo bench clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install -e '.[dev]'

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

# A real single-node SLURM on localhost (installed with apt when missing; needs root): a 2-seed
# hydra/launcher=slurm sweep, aggregation, three forced timeouts with requeue and resume.
test-slurm:
	tests/slurm/run.sh

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

DEMO_DIR := outputs/demo

# CPU demo: synthetic data (generated once), DCLS ConvNeXt-atto training, eval table.
demo:
	@test -f data/synthetic/train.h5 -a -f data/synthetic/eval.h5 || \
		$(BIN)/dcls-audio-synthetic --out data/synthetic
	rm -rf $(DEMO_DIR)
	$(BIN)/python train.py experiment=demo hydra.run.dir=$(DEMO_DIR)
	$(BIN)/dcls-audio-results $(DEMO_DIR)

bench:
	$(BIN)/dcls-audio-bench-kernels --json docs/bench_dcls.json

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Another CUDA build of the pinned torch, e.g. `make install TORCH_CUDA=cu126` for V100s (sm_70):
# PyPI's torch 2.11 wheels are CUDA 13.0 builds for sm_75 and newer.
TORCH_CUDA ?=
TORCH_INDEX := https://download.pytorch.org/whl

.PHONY: install test test-fast test-slurm lint demo bench bench-dcls-cuda gpu-check clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	@if [ -n "$(TORCH_CUDA)" ]; then \
		$(BIN)/pip install 'torch==2.11.*' 'torchvision==0.26.*' 'torchaudio==2.11.*' \
			--index-url $(TORCH_INDEX)/$(TORCH_CUDA); fi
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

# CPU demo, a mini Table 1: the demo sound set (generated once into data/sounds), a linear probe,
# and the same small ConvNeXt trained with DSC and with DCLS-Gauss; writes outputs/demo/summary.json.
demo:
	rm -rf $(DEMO_DIR)
	$(BIN)/dcls-audio-demo --out $(DEMO_DIR) --data data/sounds

bench:
	$(BIN)/dcls-audio-bench-kernels --json docs/bench_dcls.json

# On a GPU machine: per-layer CUDA table of the DCLS depthwise paths, and the install self-check.
bench-dcls-cuda:
	$(BIN)/dcls-audio-bench-kernels --cuda-only --repeats 20 --json docs/bench_dcls_cuda.json

gpu-check:
	$(BIN)/dcls-audio-gpu-check --json gpu_check.json

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

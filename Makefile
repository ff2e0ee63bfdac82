PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The whole tested environment, every package at an exact version with its hashes (see `make lock`).
LOCK := requirements.lock
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
# Another CUDA build of the locked torch, e.g. `make install TORCH_CUDA=cu126` for V100s (sm_70):
# PyPI's torch 2.11 wheels are CUDA 13.0 builds for sm_75 and newer.
TORCH_CUDA ?=
TORCH_INDEX := https://download.pytorch.org/whl

.PHONY: install lock selfcheck test test-fast test-faults test-slurm lint demo demo-fresh bench bench-dcls-cuda gpu-check clean

# pip installs the lock with --require-hashes: every package at the tested version, nothing
# resolved anew on the user's machine. The CUDA variant takes the lock's torch family from
# PyTorch's index (with that build's own nvidia-* wheels) and everything else from the lock.
install:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'pip==$(PIP_VERSION)'
ifeq ($(TORCH_CUDA),)
	$(BIN)/pip install --require-hashes -r $(LOCK)
else
	$(PY) -m dcls_audio.lockfile --without-torch $(LOCK) > $(VENV)/lock-without-torch.txt
	$(BIN)/pip install --require-hashes --no-deps -r $(VENV)/lock-without-torch.txt
	$(BIN)/pip install $$($(PY) -m dcls_audio.lockfile --torch-family $(LOCK)) \
		--index-url $(TORCH_INDEX)/$(TORCH_CUDA)
endif
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	$(BIN)/python -m dcls_audio.selfcheck

# Loads every compiled extension the project uses; non-zero naming the package if one fails.
selfcheck:
	$(BIN)/python -m dcls_audio.selfcheck

# Regenerate the lock after changing a dependency in pyproject.toml, or to take new releases.
# uv resolves one universal lock (CPython >= 3.11; tested on Linux x86-64 with 3.11 and 3.12)
# with one version per package for every Python ("fewest" forks), and records the hashes of
# every file of each pinned version; pip, present in every venv, installs it.
lock:
	$(PY) -m venv .lockenv
	.lockenv/bin/pip install --quiet 'uv==$(UV_VERSION)'
	.lockenv/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--fork-strategy fewest --generate-hashes --no-header -o $(LOCK)

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

# The fault-injection matrix (tests/test_faults.py with --faults; `make test` runs a covering
# subset): each stop signal at a step, at an epoch boundary, during an evaluation and during a
# save, SIGKILL, a full disk, a truncated training file, torchrun, the demo, dcls-audio-evaluate.
test-faults:
	$(BIN)/python -m pytest -q --faults tests/test_faults.py

# A real SLURM on this host, two slurmd nodes (installed with apt when missing; needs root): a
# 2-seed hydra/launcher=slurm sweep, aggregation, forced timeouts and preemptions with requeue and
# resume, a two-node DDP job stopped, requeued and resumed on both nodes.
test-slurm:
	tests/slurm/run.sh

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

DEMO_DIR := outputs/demo

# CPU demo, a mini Table 1: the demo sound set (generated once into data/sounds), a linear probe,
# and the same small ConvNeXt trained with DSC and with DCLS-Gauss; writes outputs/demo/summary.json.
# A stopped `make demo` resumes where it stopped; `make demo-fresh` deletes outputs/demo first.
demo:
	$(BIN)/dcls-audio-demo --out $(DEMO_DIR) --data data/sounds

demo-fresh:
	rm -rf $(DEMO_DIR)
	$(MAKE) demo

bench:
	$(BIN)/dcls-audio-bench-kernels --json docs/bench_dcls.json

# On a GPU machine: per-layer CUDA table of the DCLS depthwise paths, and the install self-check.
bench-dcls-cuda:
	$(BIN)/dcls-audio-bench-kernels --cuda-only --repeats 20 --json docs/bench_dcls_cuda.json

gpu-check:
	$(BIN)/dcls-audio-gpu-check --json gpu_check.json

clean:
	rm -rf $(VENV) .lockenv outputs multirun .pytest_cache

"""Shared pytest set-up: quiet, offline, deterministic CPU runs."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_torch():
    """Give every test the same global RNG state."""
    torch.manual_seed(0)
    yield

"""Shared pytest set-up: quiet, offline, deterministic CPU runs."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(autouse=True)
def _seed_torch():
    """Give every test the same global RNG state."""
    torch.manual_seed(0)
    yield


def cfgs(model: str, conv: str, num_classes: int = 527, **over) -> tuple[dict, dict]:
    """The shipped yaml configs, with ``${data.num_classes}`` resolved to ``num_classes``."""
    root = OmegaConf.create({"data": {"num_classes": num_classes}})
    root.model = OmegaConf.load(CONFIGS / "model" / f"{model}.yaml")
    root.conv = OmegaConf.load(CONFIGS / "conv" / f"{conv}.yaml")
    m = OmegaConf.to_container(root.model, resolve=True)
    m.update(over)
    return m, OmegaConf.to_container(root.conv, resolve=True)

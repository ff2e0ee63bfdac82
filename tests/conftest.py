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


def atto_dcls_cfgs(num_classes: int) -> tuple[dict, dict]:
    """Plain (model, conv) configs of a ConvNeXt-atto with Table 1's DCLS-Gauss layers."""
    model = {
        "name": "convnext_atto",
        "timm_name": "convnext_atto",
        "num_classes": num_classes,
        "drop_path_rate": 0.0,
        "pretrained": None,
        "in_chans": 1,
        "stem_kernel": [2, 16],
    }
    conv = {
        "name": "dcls_gauss",
        "type": "dcls",
        "kernel_size": 7,
        "dilated_kernel_size": 23,
        "kernel_count": 26,
        "version": "gauss",
        "share_positions": True,
    }
    return model, conv

"""Shared pytest set-up: quiet, offline, deterministic CPU runs; shipped configs; tiny data."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dcls_audio.config import compose_config, load_group  # noqa: E402
from dcls_audio.datasets.synthetic import make_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# The real train config shrunk to a CPU run: ConvNeXt-atto with small DCLS kernels.
TINY_RUN = (
    "data=synthetic",
    "data.num_workers=0",
    "model=convnext_atto",
    "trainer.device=cpu",
    "trainer.log_every=1",
    "wandb.mode=disabled",
)


def pytest_addoption(parser):
    parser.addoption(
        "--faults",
        action="store_true",
        help="also run the fault-injection matrix (make test-faults)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "faults: fault-injection matrix cells, run only with --faults (make test-faults)"
    )


def pytest_collection_modifyitems(config, items):
    """Leave the `faults` cells out unless --faults is given."""
    if config.getoption("--faults"):
        return
    skipped = [item for item in items if item.get_closest_marker("faults")]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if not item.get_closest_marker("faults")]


@pytest.fixture(autouse=True)
def _seed_torch():
    """Give every test the same global RNG state."""
    torch.manual_seed(0)
    yield


def cfgs(model: str, conv: str, num_classes: int = 527, **over) -> tuple[dict, dict]:
    """The shipped model and conv configs (model ``num_classes`` resolved), model keys updated."""
    m = load_group("model", model, overrides=[f"data.num_classes={num_classes}"])
    m.update(over)
    return m, load_group("conv", conv)


def tiny_overrides(data_root, *overrides, conv: str = "dcls_gauss") -> list[str]:
    """`TINY_RUN` on the synthetic set at ``data_root`` (DCLS: 5x5 kernels of 3), ``overrides``."""
    small = ("conv.dilated_kernel_size=5", "conv.kernel_count=3") if conv != "dsc" else ()
    return [*TINY_RUN, f"conv={conv}", *small, f"data.root={data_root}", *overrides]


def train_cfg(data_root, *overrides, conv: str = "dcls_gauss"):
    """The composed training config of a tiny CPU run (see `TINY_RUN`)."""
    return compose_config(tiny_overrides(data_root, *overrides, conv=conv))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """``synthetic_root(n_train)``: a synthetic set with n_train + 5 eval clips (made once)."""
    made = {}

    def make(n_train: int) -> Path:
        if n_train not in made:
            root = tmp_path_factory.mktemp(f"synthetic{n_train}")
            make_synthetic(root, n_train=n_train, n_eval=5, seed=0)
            made[n_train] = root
        return made[n_train]

    return make

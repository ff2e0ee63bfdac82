"""The shipped configs, composed with Hydra's compose API.

The configs live in the top-level ``configs/`` folder of the source tree, where users edit them,
and are installed as the package data ``dcls_audio.configs`` (a package-dir mapping in
``pyproject.toml``), so every command finds them by module name, from any directory, with or
without an editable install. Nothing here reads files relative to this source file.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "dcls_audio.configs"


def config_names(group: str) -> list[str]:
    """Option names of a config group (e.g. ``model`` -> convnext_t, ...), sorted."""
    root = resources.files(CONFIG_MODULE)
    for part in group.split("/"):
        root = root / part
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The training config composed as ``python train.py OVERRIDES...`` would see it."""
    gh = GlobalHydra.instance()
    outer = gh.hydra if gh.is_initialized() else None  # inside a running Hydra app: restore it
    gh.clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(config_name, overrides=list(overrides))
    finally:
        gh.clear()
        if outer is not None:
            gh.initialize(outer)


def load_group(group: str, name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One group option (e.g. ``model``, ``convnext_t``) as a plain, resolved dict.

    Interpolations resolve against the default training config (so ``model.num_classes`` is
    AudioSet's 527 unless an override says otherwise).
    """
    known = config_names(group)
    if name not in known:
        raise ValueError(f"unknown {group} '{name}' (known: {known})")
    cfg = compose_config([f"{group}={name}", *overrides])
    return OmegaConf.to_container(OmegaConf.select(cfg, group.replace("/", ".")), resolve=True)

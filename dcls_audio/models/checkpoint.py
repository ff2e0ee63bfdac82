"""Checkpoint -> model: the one way commands (tagging, plots, evaluation, export) get a model.

Files are read with ``torch.load(weights_only=True)`` only: a checkpoint is data, never code.
A run's ``last.pt``/``best.pt`` carries its resolved config, which rebuilds the architecture
(model and conv choice) before the weights load strictly. Any other file (the DCLS-Audio authors'
AudioSet checkpoints, state dicts in official or timm names) is read by
:mod:`dcls_audio.models.foreign`: the architecture comes from ``model``/``conv`` when given,
else from the file (its ``args`` or its tensors), and the weights load strictly through
:func:`dcls_audio.models.pretrained.load_source`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .foreign import WRAPPER_PREFIXES, infer_architecture, kernel_count, read_source
from .pretrained import LoadReport, load_source
from .zoo import build_model


@dataclass
class LoadedModel:
    """A model in eval mode, rebuilt from a checkpoint, with what describes it."""

    model: nn.Module
    weights: str  # "ema" or "model": which state dict of the checkpoint was loaded
    class_names: list[str]
    config: dict[str, Any]
    path: Path
    report: LoadReport | None = None  # how a foreign file was mapped; None for our checkpoints


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a dcls-audio checkpoint safely and check it has what rebuilding a model needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated file, not a torch file, ...
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"checkpoint {path}: cannot be loaded safely ({reason})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    missing = [k for k in ("model", "config") if k not in ckpt]
    if missing:
        raise ValueError(
            f"checkpoint {path}: missing key(s) {missing}; expected a dcls-audio checkpoint "
            "(a run's last.pt or best.pt) with 'model', 'ema', 'config', 'class_names'"
        )
    for key in ("model", "conv"):
        if not isinstance(ckpt["config"], dict) or key not in ckpt["config"]:
            raise ValueError(f"checkpoint {path}: config has no '{key}' section")
    return ckpt


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix (``module.``, ``_orig_mod.``) that all keys share."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def class_names_for(ckpt: dict[str, Any], num_classes: int) -> list[str]:
    """Class display names: the checkpoint's, else the packaged AudioSet list for 527 classes."""
    names = ckpt.get("class_names")  # optional: files written by other tools lack it
    if names:
        if len(names) != num_classes:
            raise ValueError(f"checkpoint has {len(names)} class_names for {num_classes} outputs")
        return [str(n) for n in names]
    if num_classes == 527:
        from dcls_audio.data import load_class_labels

        return load_class_labels(None)
    return [f"class {i}" for i in range(num_classes)]


def load_model(
    path: str | os.PathLike,
    prefer_ema: bool = True,
    device: str | torch.device = "cpu",
    model: str | None = None,
    conv: str | None = None,
    fmt: str = "auto",
) -> LoadedModel:
    """Rebuild a checkpoint's model and load its EMA weights (when present and preferred).

    ``model``/``conv`` (zoo and conv config names) choose the architecture of a foreign file;
    ``fmt`` names its layout when detection is not wanted (see :data:`foreign.FORMATS`).
    """
    source = read_source(path, prefer_ema=prefer_ema, fmt=fmt)
    if source.config is None:
        return _load_foreign(source, device, model, conv)
    if model is not None or conv is not None:
        raise ValueError(
            f"checkpoint {path}: a dcls-audio checkpoint carries its own model and conv config; "
            "--model/--conv apply to other files only"
        )
    ckpt = read_checkpoint(path)
    config = ckpt["config"]
    # weights come from the checkpoint (older checkpoints have no model.init)
    model_cfg = {**config["model"], "pretrained": None, "init": "none"}
    net = build_model(model_cfg, config["conv"])
    which = "ema" if prefer_ema and ckpt.get("ema") is not None else "model"
    try:
        net.load_state_dict(strip_prefixes(ckpt[which]))
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path}: {which} weights do not fit its config ({err})"
        ) from err
    net.to(device).eval()
    num_classes = int(model_cfg["num_classes"])
    return LoadedModel(net, which, class_names_for(ckpt, num_classes), config, Path(path))


def _load_foreign(
    source: Any, device: str | torch.device, model: str | None, conv: str | None
) -> LoadedModel:
    """Build the zoo model a foreign file holds and load it strictly (same class count)."""
    from dcls_audio.config import load_group

    name, conv_name, num_classes = infer_architecture(source)
    name, conv_name = model or name, conv or conv_name
    over = [f"data.num_classes={num_classes}"]
    config = {"model": load_group("model", name, over), "conv": load_group("conv", conv_name)}
    if config["conv"]["type"] == "dcls" and kernel_count(source):  # the size is not stored
        config["conv"]["kernel_count"] = kernel_count(source)
    net = build_model(config["model"], config["conv"])
    report = load_source(net, source, "finetune")
    if report.new.get("classifier"):
        raise ValueError(f"checkpoint {source.path}: its classifier does not fit {name}")
    net.to(device).eval()
    names = class_names_for({}, num_classes)
    return LoadedModel(net, source.weights, names, config, source.path, report)

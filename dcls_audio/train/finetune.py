"""Fine-tuning helpers: layer-wise lr decay, a frozen backbone for the first epochs, the report.

The weights themselves come from ``model.pretrained=PATH model.init=finetune``: `build_model`
loads the checkpoint (our run checkpoints or the DCLS-Audio authors' files) through the
checkpoint loader of :mod:`dcls_audio.models.pretrained`, keeps the audio stem and gives the
model a new head when the class count differs. What this module adds is what the optimizer
does with such a model:

- ``optim.layer_decay`` (< 1): layer-wise lr decay as in BEiT/timm: the head trains at the full
  lr, each layer group below it (timm's ``group_matcher``: stem, then every block) at
  ``layer_decay`` times the one above. The DCLS positions keep their extra ``dcls_lr_scale``.
  1.0 builds the optimizer exactly as without fine-tuning.
- ``trainer.freeze_backbone_epochs`` (N > 0): during the first N epochs only the classifier is
  updated; the backbone's gradients are dropped before every optimizer step (so AdamW neither
  moves nor decays those weights, nor updates their moments). Gradients are still computed, so
  DDP needs nothing special, and the epoch comes from the resumable run state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dcls_audio.dcls import is_dcls_position


def classifier_prefix(model: nn.Module) -> str:
    """Qualified name of the model's classifier (timm's ``pretrained_cfg['classifier']``)."""
    name = model.pretrained_cfg.get("classifier", "head.fc")
    return name if isinstance(name, str) else name[0]


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Layer group of every parameter name (timm's fine-grained group matcher) and the count."""
    from timm.models import group_parameters

    mapping = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    return mapping, max(mapping.values()) + 1


def layer_decay_groups(
    model: nn.Module, weight_decay: float, dcls_lr_scale: float, layer_decay: float
) -> list[dict[str, Any]]:
    """Parameter groups by (layer, kind) with ``lr_scale = layer_decay ** (top - layer)``.

    Kinds as `dcls_audio.train.optim.param_groups`: decayed weights; 1-D parameters and biases
    (no weight decay); DCLS positions/sigmas (no weight decay, ``dcls_lr_scale`` times more).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"optim.layer_decay={layer_decay}: expected a value in (0, 1]")
    ids, count = layer_ids(model)
    top = count - 1
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = ids.get(name, top)
        scale = layer_decay ** (top - layer)
        if is_dcls_position(name):
            kind, wd, scale = "dcls_positions", 0.0, scale * float(dcls_lr_scale)
        elif p.ndim <= 1 or name.endswith(".bias"):
            kind, wd = "no_decay", 0.0
        else:
            kind, wd = "decay", float(weight_decay)
        group = groups.setdefault(
            (layer, kind),
            {"params": [], "weight_decay": wd, "lr_scale": scale, "name": f"{kind}_layer{layer}"},
        )
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_run_optimizer(
    model: nn.Module, optim_cfg: Any, global_batch_size: int
) -> torch.optim.Optimizer:
    """`build_optimizer`, with layer-wise lr decay when ``optim.layer_decay`` < 1."""
    from dcls_audio.train.optim import build_optimizer

    decay = float(optim_cfg.layer_decay)
    optimizer = build_optimizer(model, optim_cfg, global_batch_size)
    if decay == 1.0:
        return optimizer
    groups = layer_decay_groups(
        model, optim_cfg.weight_decay, optim_cfg.dcls_lr_scale, layer_decay=decay
    )
    optimizer.param_groups.clear()  # same optimizer and settings, new groups (fresh state)
    for group in groups:
        optimizer.add_param_group(group)  # fills lr, betas, ... from the optimizer's defaults
    return optimizer


def freeze_backbone(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    current_epoch: Callable[[], int],
) -> Any:
    """Drop backbone gradients before each step while ``current_epoch() < epochs``; the handle."""
    if epochs < 0:
        raise ValueError(f"trainer.freeze_backbone_epochs={epochs}: expected >= 0")
    if epochs == 0:
        return None
    head = classifier_prefix(model) + "."
    backbone = [p for n, p in model.named_parameters() if not n.startswith(head)]

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if current_epoch() < epochs:
            for p in backbone:
                p.grad = None

    return optimizer.register_step_pre_hook(hook)


def init_report(model: nn.Module) -> dict[str, Any] | None:
    """What ``model.pretrained`` loaded (summary line and tensor lists), None without it."""
    report = getattr(model, "build_info", {}).get("pretrained")
    if report is None:
        return None
    detail = report.as_dict() if hasattr(report, "as_dict") else {}
    return {"summary": report.summary(), **detail}

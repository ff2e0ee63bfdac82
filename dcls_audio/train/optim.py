"""Parameter groups, optimizers (AdamW, timm's LAMB) and the per-iteration cosine schedule.

Recipe (paper Table 2): base lr 4e-3 at a global batch of 4096, scaled linearly; weight decay
0.05 except on 1-D parameters, biases and the DCLS positions/sigmas; P and SIG at 5x the lr through
the group's ``lr_scale`` (timm's scheduler multiplies it in, so the group's own lr stays the base);
linear warm-up from 0 then half-cycle cosine to lr_min, stepped every optimizer update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.optim import Lamb
from timm.scheduler import CosineLRScheduler

from dcls_audio.dcls import is_dcls_position


def scaled_lr(base_lr: float, global_batch_size: int, reference_batch: int = 4096) -> float:
    """Linear lr scaling: base_lr at ``reference_batch``, proportional to the global batch."""
    return float(base_lr) * float(global_batch_size) / float(reference_batch)


def param_groups(
    model: torch.nn.Module, weight_decay: float, dcls_lr_scale: float = 5.0
) -> list[dict[str, Any]]:
    """Three groups: decayed weights; 1-D params and biases (wd 0); DCLS P/SIG (wd 0, lr_scale).

    Empty groups are dropped. Shared P/SIG Parameters appear once (``named_parameters`` dedups).
    """
    decay, no_decay, dcls = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_dcls_position(name):
            dcls.append(p)
        elif p.ndim <= 1 or name.endswith(".bias") or name == "bias":
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        {
            "params": dcls,
            "weight_decay": 0.0,
            "lr_scale": float(dcls_lr_scale),
            "name": "dcls_positions",
        },
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: torch.nn.Module, optim_cfg: Mapping[str, Any], global_batch_size: int
) -> torch.optim.Optimizer:
    """AdamW or timm's Lamb over `param_groups`, lr scaled to ``global_batch_size``."""
    name = str(optim_cfg["name"]).lower()
    lr = scaled_lr(optim_cfg["lr"], global_batch_size, optim_cfg["lr_ref_batch"])
    groups = param_groups(model, optim_cfg["weight_decay"], optim_cfg["dcls_lr_scale"])
    betas = tuple(float(b) for b in optim_cfg["betas"])
    eps = float(optim_cfg["eps"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    if name == "lamb":
        max_norm = optim_cfg["max_grad_norm"]
        return Lamb(
            groups,
            lr=lr,
            betas=betas,
            eps=eps,
            max_grad_norm=None if max_norm is None else float(max_norm),
        )
    raise ValueError(f"optim.name={name!r}: expected adamw or lamb")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    warmup_epochs: int,
    steps_per_epoch: int,
    lr_min: float = 1e-6,
    warmup_lr_init: float = 0.0,
) -> CosineLRScheduler:
    """timm cosine schedule in optimizer updates: warm-up, then a half cosine to ``lr_min``.

    ``warmup_prefix=True`` makes the cosine start after the warm-up (t_curr = t - warmup_t), so
    the lr rises linearly from ``warmup_lr_init`` at update 0 to the base lr at update warmup_t,
    and reaches ``lr_min`` at update epochs x steps_per_epoch.
    """
    if warmup_epochs > epochs:
        raise ValueError(f"trainer.warmup_epochs={warmup_epochs} exceeds trainer.epochs={epochs}")
    warmup_t = int(warmup_epochs * steps_per_epoch)
    t_initial = max(1, int((epochs - warmup_epochs) * steps_per_epoch))
    return CosineLRScheduler(
        optimizer,
        t_initial=t_initial,
        lr_min=float(lr_min),
        cycle_limit=1,
        warmup_t=warmup_t,
        warmup_lr_init=float(warmup_lr_init),
        warmup_prefix=True,
        t_in_epochs=False,
    )

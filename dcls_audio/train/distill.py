"""Knowledge distillation: the teacher loss and where the teacher's logits come from.

The student's loss is ``(1 - weight) * label_loss + weight * teacher_loss``:

- multilabel: binary cross-entropy of ``sigmoid(student / T)`` against ``sigmoid(teacher / T)``
  per class (the soft-target BCE of EfficientAT and CED);
- multiclass: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.), the
  ``T^2`` keeping the gradient scale independent of ``T``.

With mixup, the teacher's probabilities at ``T`` are mixed with the same pairs and lambda as the
labels (`mix_soft`), so the target describes the mixed input the student sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

MODES = ("none", "stored", "online")


def teacher_probs(teacher_logits: torch.Tensor, temperature: float, task: str) -> torch.Tensor:
    """The teacher's soft targets at ``temperature``: sigmoid (multilabel) or softmax."""
    z = teacher_logits.float() / temperature
    return torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, dim=1)


def mix_soft(probs: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """Mix soft targets with mixup's pairs: ``lam * p + (1 - lam) * p[perm]``."""
    return probs * lam + probs[perm.to(probs.device)] * (1 - lam)


def teacher_loss(
    student_logits: torch.Tensor, targets: torch.Tensor, temperature: float, task: str
) -> torch.Tensor:
    """Loss of the student against the teacher's (possibly mixed) soft targets at ``T``."""
    z = student_logits.float() / temperature
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(z, targets.float())
    log_q = F.log_softmax(z, dim=1)
    kl = (targets * (targets.clamp_min(1e-12).log() - log_q)).sum(dim=1).mean()
    return kl * temperature**2


@dataclass(frozen=True)
class DistillConfig:
    """``distill.*`` validated: mode, weight, temperature and the teacher file(s)."""

    mode: str
    weight: float
    temperature: float
    teacher: tuple[str, ...]
    teacher_logits: str | None

    @classmethod
    def from_config(cls, cfg: Any) -> DistillConfig:
        """Read ``distill`` (teacher | teacher_logits, weight, temperature) from the config."""
        teacher = cfg.get("teacher")
        teachers = () if not teacher else (teacher,) if isinstance(teacher, str) else teacher
        logits = cfg.get("teacher_logits")
        weight, temperature = float(cfg["weight"]), float(cfg["temperature"])
        if teachers and logits:
            raise ValueError(
                "distill.teacher and distill.teacher_logits are both set; give one: a checkpoint "
                "to run online, or the sidecar file of stored logits"
            )
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distill.weight={weight}; expected a value in [0, 1]")
        if temperature <= 0:
            raise ValueError(f"distill.temperature={temperature}; expected > 0")
        mode = "online" if teachers else "stored" if logits else "none"
        if mode == "none" and weight > 0:
            raise ValueError(
                f"distill.weight={weight} but no teacher: set distill.teacher=CHECKPOINT or "
                "distill.teacher_logits=SIDECAR.h5 (or distill.weight=0)"
            )
        return cls(mode, weight, temperature, tuple(str(t) for t in teachers), logits)

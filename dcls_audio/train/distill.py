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
        if mode != "none" and weight == 0:
            given = "distill.teacher" if teachers else "distill.teacher_logits"
            raise ValueError(
                f"{given} is set but distill.weight=0: the teacher would run for nothing and the "
                "model would train on labels only; add distill=teacher (weight 0.9) or set "
                f"distill.weight in (0, 1], or drop {given}"
            )
        return cls(mode, weight, temperature, tuple(str(t) for t in teachers), logits)


def online_logits(models: list[torch.nn.Module], spec: torch.Tensor, task: str) -> torch.Tensor:
    """Teacher logits of a batch (an ensemble's: of the mean probability), float32, no grad."""
    amp = spec.device.type == "cuda"
    with torch.no_grad(), torch.autocast(spec.device.type, torch.bfloat16, enabled=amp):
        logits = [m(spec).float() for m in models]
    if len(logits) == 1:
        return logits[0]
    if task == "multilabel":
        mean = torch.stack([torch.sigmoid(z) for z in logits]).mean(0).clamp(1e-6, 1 - 1e-6)
        return mean.log() - (-mean).log1p()
    return torch.stack([torch.softmax(z, 1) for z in logits]).mean(0).clamp_min(1e-12).log()


class Teacher:
    """The teacher of a run: soft targets for a batch from stored logits or online models."""

    def __init__(self, cfg: DistillConfig, task: str, stored: Any = None, models: Any = ()):
        self.cfg, self.task = cfg, task
        self.stored = stored  # dcls_audio.data.teacher_logits.TeacherLogits (mode "stored")
        self.models = list(models)  # eval-mode teacher models (mode "online")
        for m in self.models:
            m.eval().requires_grad_(False)

    def logits(self, spec: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Teacher logits of the batch: stored rows of ``index``, or the models run on ``spec``."""
        if self.stored is not None:
            if index is None:
                raise ValueError("stored teacher logits need the batch's dataset indices")
            rows = torch.from_numpy(self.stored[index.cpu().numpy()])
            return rows.to(spec.device, non_blocking=True)
        return online_logits(self.models, spec, self.task)

    def targets(self, spec: torch.Tensor, index: torch.Tensor | None, mixup: Any) -> torch.Tensor:
        """Soft targets at T for the unmixed batch ``spec``, mixed as the last mixup mixed it."""
        probs = teacher_probs(self.logits(spec, index), self.cfg.temperature, self.task)
        if getattr(mixup, "enabled", False):
            probs = mix_soft(probs, mixup.last_lam, mixup.last_perm)
        return probs

    def loss(
        self, label_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """``(1 - weight) * label_loss + weight * teacher_loss``."""
        w = self.cfg.weight
        kd = teacher_loss(logits, targets, self.cfg.temperature, self.task)
        return (1 - w) * label_loss + w * kd


def build_teacher(
    cfg: DistillConfig, task: str, num_classes: int, device: torch.device, train_set: Any
) -> Teacher | None:
    """The run's `Teacher` (None without distillation); checks classes and task agree.

    ``train_set`` (an `AudioSetHDF5`) names the clips whose stored logits are looked up.
    """
    if cfg.mode == "none":
        return None
    if cfg.mode == "stored":
        from dcls_audio.data.teacher_logits import TeacherLogits

        stored = TeacherLogits(cfg.teacher_logits, train_set.audio_names(), num_classes)
        if stored.info["task"] != task:
            raise ValueError(
                f"distill.teacher_logits={cfg.teacher_logits}: written for a {stored.info['task']}"
                f" teacher, the run is {task}"
            )
        return Teacher(cfg, task, stored=stored)
    from dcls_audio.models.checkpoint import load_model

    models = []
    for path in cfg.teacher:
        loaded = load_model(path, device=device)
        if int(loaded.config["model"]["num_classes"]) != num_classes:
            raise ValueError(
                f"distill.teacher={path}: {loaded.config['model']['num_classes']} classes, the "
                f"run has {num_classes}"
            )
        models.append(loaded.model)
    return Teacher(cfg, task, models=models)


def results_entry(cfg: DistillConfig) -> dict[str, Any]:
    """The ``distill`` entry of results.json: mode, teacher files with content hashes, settings.

    ``hash`` identifies the teacher whatever its path: the checkpoints' SHA-256 (online), or the
    SHA-256 of the checkpoints the stored logits were written from (stored).
    """
    from dcls_audio.data.teacher_logits import file_sha256, read_attrs

    if cfg.mode == "none":
        return {"mode": "none"}
    entry: dict[str, Any] = {"mode": cfg.mode, "weight": cfg.weight,
                             "temperature": cfg.temperature}  # fmt: skip
    if cfg.mode == "online":
        entry["teachers"] = [{"path": p, "sha256": file_sha256(p)} for p in cfg.teacher]
    else:
        info = read_attrs(cfg.teacher_logits)
        entry["teacher_logits"] = {"path": cfg.teacher_logits,
                                   "sha256": file_sha256(cfg.teacher_logits)}  # fmt: skip
        entry["teachers"] = [{"path": t["path"], "sha256": t["sha256"]} for t in info["teachers"]]
    entry["hash"] = ",".join(sorted(t["sha256"] for t in entry["teachers"]))
    return entry

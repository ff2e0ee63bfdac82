"""What the training loop works with, in four small objects, and the per-epoch seeding.

- `Trainee`: what is trained (the bare model, the module to call, the EMA copy); the loop
  updates its weights.
- `Recipe`: how a step is taken (frontend, mixup, task, optimizer, schedule, accumulation,
  clamping, AMP, device, teacher); the loop steps the optimizer and the schedule, nothing else.
- `Plan`: how long and when (epochs, steps, evaluation cadence, seed, rank); never changed.
- `RunIO`: where the run reports and saves (run dir, logger, step log, stop signal, what a
  checkpoint describes); the loop writes through it.

The progress of a run is `dcls_audio.train.checkpoint.RunState`, the one object the loop
mutates besides the weights.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from dcls_audio.train.distill import Teacher
from dcls_audio.train.frames import FrameLoss
from dcls_audio.train.log import RunLogger, StepLog
from dcls_audio.train.preempt import StopSignal
from dcls_audio.train.tasks import Task


class ModelEma(ModelEmaV3):
    """timm's ModelEmaV3, updating each tensor once even when modules share it.

    ModelEmaV3 walks ``state_dict()``, which lists a Parameter shared by several modules (the
    per-stage DCLS positions) once per module, so the shared tensor would be decayed k times per
    step. ``parameters()``/``buffers()`` list each tensor once, in the same order for the copy.
    """

    @torch.no_grad()
    def apply_update_(self, model: nn.Module, decay: float) -> None:
        """EMA step over unique parameters and buffers (non-float buffers are copied)."""
        ema_ts = [*self.module.parameters(), *self.module.buffers()]
        model_ts = [*model.parameters(), *model.buffers()]
        if len(ema_ts) != len(model_ts):
            raise RuntimeError("EMA copy and model have different tensor counts")
        ema_f, model_f = [], []
        for e, m in zip(ema_ts, model_ts, strict=True):
            if e.is_floating_point():
                ema_f.append(e)
                model_f.append(m.to(device=e.device))
            else:
                e.copy_(m.to(device=e.device))
        if self.foreach:
            self._foreach_lerp_(ema_f, model_f, weight=1.0 - decay)
        else:
            for e, m in zip(ema_f, model_f, strict=True):
                self._lerp_(e, m, weight=1.0 - decay)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed for everything random in one epoch on one rank, a function of (seed, epoch, rank)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def seed_epoch(seed: int, epoch: int, rank: int) -> tuple[torch.Generator, torch.Generator]:
    """Reseed the global RNGs for an epoch; return CPU generators for (mixup, random erasing).

    Drop path draws from the global torch RNG; reseeding it here makes an epoch replayed after a
    restart identical to the original one.
    """
    s = epoch_seed(seed, epoch, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    mix_gen, erase_gen = torch.Generator(), torch.Generator()
    mix_gen.manual_seed(s ^ 0x5DEECE66D)
    erase_gen.manual_seed(s ^ 0x2545F4914F6CDD1D)
    return mix_gen, erase_gen


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels when asked (exact GPU resume), else cuDNN autotuning on CUDA.

    On the CPU training is deterministic either way; on CUDA some kernels (e.g. atomics in
    backward passes) are not, so without this a resumed run matches only to float noise.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # input shape is fixed: autotune once


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when enabled, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class Trainee:
    """What is trained: the bare model, the module to call, the EMA.

    The module to call is the model DDP-wrapped and/or compiled (``trainer.compile``), or the
    model itself; weights are saved and evaluated from the bare model.
    """

    model: nn.Module
    ddp_model: nn.Module
    ema: ModelEma | None

    def weights(self) -> list[nn.Module]:
        """The models evaluated and saved: the model, then its EMA copy when there is one."""
        return [self.model] + ([self.ema.module] if self.ema is not None else [])


@dataclass
class Recipe:
    """How one optimizer step is taken: inputs, loss, update."""

    frontend: nn.Module
    mixup: Callable
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's CosineLRScheduler (stepped per optimizer step)
    accum_steps: int
    clamp_positions: bool
    amp: bool
    device: torch.device
    teacher: Teacher | None = None  # distillation: soft targets mixed into the loss
    channels_last: bool = False  # input batches in channels_last, as the model (trainer.*)
    frames: FrameLoss | None = None  # strong labels: the frame term of the loss (frames=strong)
    strong_items: bool = False  # batches carry (events, strong) after the clip labels


@dataclass(frozen=True)
class Plan:
    """How long the run trains and when it evaluates; the same on every rank but ``rank``."""

    epochs: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int  # epochs between evaluations (0: only the last); the last is always evaluated
    seed: int
    rank: int
    main: bool


@dataclass
class RunIO:
    """Where the run reports and saves, and what its checkpoints describe."""

    run_dir: Path
    logger: RunLogger
    step_log: StepLog
    stop: StopSignal
    config: dict[str, Any]
    class_names: list[str]
    session_start: float  # time.time() when this process started the run (wall-time total)
    on_step: Callable[[int], None] | None = None  # after every optimizer step (tests, profiling)

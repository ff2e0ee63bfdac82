"""One training epoch (accumulation, DDP no_sync, autocast, clamp, EMA, schedule) and evaluation."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3

from dcls_audio.dcls import clamp_dcls
from dcls_audio.train.distributed import all_reduce_mean, maybe_no_sync
from dcls_audio.train.log import RunLogger


class ModelEma(ModelEmaV3):
    """timm's ModelEmaV3, updating each tensor once even when modules share it.

    ModelEmaV3 walks ``state_dict()``, which lists a Parameter shared by several modules (the
    per-stage DCLS positions) once per module, so the shared tensor would be decayed k times per
    step. ``parameters()``/``buffers()`` list each tensor once, in the same order for the copy.
    """

    @torch.no_grad()
    def apply_update_(self, model: torch.nn.Module, decay: float) -> None:
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
class TrainContext:
    """Everything an epoch needs; ``model`` is unwrapped, ``ddp_model`` may be DDP-wrapped."""

    model: torch.nn.Module
    ddp_model: torch.nn.Module
    frontend: torch.nn.Module
    mixup: Callable
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: ModelEma | None
    loader: torch.utils.data.DataLoader
    sampler: torch.utils.data.DistributedSampler
    device: torch.device
    accum_steps: int
    steps_per_epoch: int
    epochs: int
    seed: int
    rank: int
    global_batch_size: int
    amp: bool = False
    clamp_positions: bool = True
    max_steps: int | None = None
    log_every: int = 50
    logger: RunLogger | None = None
    on_step: Callable[[int], None] | None = None
    criterion: torch.nn.Module = field(default_factory=torch.nn.BCEWithLogitsLoss)

    @property
    def total_steps(self) -> int:
        """Optimizer steps the whole run will take."""
        total = self.epochs * self.steps_per_epoch
        return min(total, self.max_steps) if self.max_steps else total


def train_one_epoch(ctx: TrainContext, epoch: int, step: int) -> tuple[int, dict[str, float]]:
    """Train one epoch from optimizer step ``step``; returns the new step and epoch statistics.

    Stops early when ``ctx.max_steps`` is reached. Incomplete accumulation groups at the end of
    the loader are skipped so that every optimizer step sees exactly the global batch.
    """
    ctx.model.train()
    ctx.frontend.train()
    mix_gen, erase_gen = seed_epoch(ctx.seed, epoch, ctx.rank)
    ctx.sampler.set_epoch(epoch)
    dataset = ctx.loader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    n_steps = ctx.steps_per_epoch
    if ctx.max_steps:
        n_steps = max(0, min(n_steps, ctx.max_steps - step))
    micro_batches = iter(ctx.loader)
    loss_sum = torch.zeros((), device=ctx.device)
    window_loss = torch.zeros((), device=ctx.device)
    window_count, samples, start = 0, 0, time.perf_counter()
    window_start = start
    for _ in range(n_steps):
        for micro in range(ctx.accum_steps):
            waveform, target = next(micro_batches)
            waveform = waveform.to(ctx.device, non_blocking=True)
            target = target.to(ctx.device, non_blocking=True)
            with torch.no_grad():
                spec = ctx.frontend(waveform, generator=erase_gen)
            spec, target = ctx.mixup(spec, target, generator=mix_gen)
            with maybe_no_sync(ctx.ddp_model, sync=micro == ctx.accum_steps - 1):
                with autocast(ctx.device, ctx.amp):
                    logits = ctx.ddp_model(spec)
                loss = ctx.criterion(logits.float(), target.float())
                (loss / ctx.accum_steps).backward()
            window_loss += loss.detach() / ctx.accum_steps
        ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.clamp_positions:
            clamp_dcls(ctx.model)
        step += 1
        if ctx.ema is not None:
            ctx.ema.update(ctx.model, step=step)
        ctx.scheduler.step_update(num_updates=step)
        samples += ctx.global_batch_size
        window_count += 1
        if ctx.on_step is not None:
            ctx.on_step(step)
        if window_count == ctx.log_every or step == ctx.total_steps:
            _log_window(ctx, epoch, step, window_loss, window_count, window_start, start, samples)
            loss_sum += window_loss
            window_loss = torch.zeros((), device=ctx.device)
            window_count, window_start = 0, time.perf_counter()
    if window_count:
        loss_sum += window_loss
    elapsed = time.perf_counter() - start
    mean_loss = all_reduce_mean(loss_sum.item() / max(1, n_steps), ctx.device)
    return step, {"loss": mean_loss, "train_time_s": elapsed, "samples": samples, "steps": n_steps}


def _log_window(
    ctx: TrainContext,
    epoch: int,
    step: int,
    window_loss: torch.Tensor,
    window_count: int,
    window_start: float,
    epoch_start: float,
    samples: int,
) -> None:
    """Console line and JSONL entry for the last ``window_count`` optimizer steps."""
    loss = all_reduce_mean(window_loss.item() / window_count, ctx.device)
    if ctx.logger is None or not ctx.logger.active:
        return
    now = time.perf_counter()
    rate = window_count * ctx.global_batch_size / max(now - window_start, 1e-9)
    per_step = (now - epoch_start) / max(1, samples // ctx.global_batch_size)
    eta = per_step * (ctx.total_steps - step)
    base_groups = [g for g in ctx.optimizer.param_groups if "lr_scale" not in g]
    lr = (base_groups or ctx.optimizer.param_groups)[0]["lr"]
    ctx.logger.train_progress(epoch, ctx.epochs, step, ctx.total_steps, loss, lr, rate, eta)
    ctx.logger.record(
        "train", {"epoch": epoch, "loss": loss, "lr": lr, "samples_per_s": rate}, step=step
    )


def evaluate(
    model: torch.nn.Module,
    frontend: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    amp: bool,
    main: bool,
) -> dict[str, Any] | None:
    """mAP, mAUC, d' and per-class AP of ``model`` over the eval loader (on the main rank).

    Every rank takes part in the gather; metrics are computed on the main rank only (None
    elsewhere). The model is left in eval mode; `train_one_epoch` switches it back.
    """
    from dcls_audio.train.evaluate import predict
    from dcls_audio.train.metrics import compute_metrics

    scores, targets = predict(
        model, frontend, loader, device, amp_dtype=torch.bfloat16 if amp else None
    )
    if not main:
        return None
    metrics = compute_metrics(scores, targets)
    metrics["num_eval_clips"] = int(scores.shape[0])
    return metrics

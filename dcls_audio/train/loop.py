"""The training loop: epochs (train, evaluate, checkpoint) and the optimizer step.

`fit` runs the epochs; `train_epoch` runs one epoch's optimizer steps, each over
``accum_steps`` micro-batches (DDP gradient sync only on the last), followed by the
position clamp, the EMA update and the per-iteration schedule. Every random draw of an epoch
comes from (seed, epoch, rank), so a run resumed from an epoch boundary replays it exactly.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from dcls_audio.dcls import clamp_dcls
from dcls_audio.train import checkpoint as ckpt
from dcls_audio.train.distributed import (
    all_gather_object,
    barrier,
    broadcast_object,
    maybe_no_sync,
    sync_buffers,
)
from dcls_audio.train.evaluate import EvaluationStopped, predict
from dcls_audio.train.log import RunLogger, StepLog
from dcls_audio.train.metrics import compute_metrics
from dcls_audio.train.preempt import StopSignal, batches


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


def train_epoch(
    model: nn.Module,
    ddp_model: nn.Module,
    loader: DataLoader,
    frontend: nn.Module,
    mixup: Callable,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: ModelEma | None,
    *,
    epoch: int,
    step: int,
    n_steps: int,
    accum_steps: int,
    generators: tuple[torch.Generator, torch.Generator],
    device: torch.device,
    amp: bool,
    clamp_positions: bool,
    on_step: Callable[[int, torch.Tensor], None],
    stop: Callable[[], bool],
) -> int:
    """Run up to ``n_steps`` optimizer steps of ``epoch`` from step ``step``; return the step.

    ``model`` is the bare model, ``ddp_model`` the one to call (DDP-wrapped or the same);
    ``generators`` draw (mixup, random erasing); ``on_step(step, loss)`` receives each step's
    loss (a device tensor, not synchronised); ``stop()`` ends the epoch early after a step.
    """
    model.train()
    frontend.train()
    mix_gen, erase_gen = generators
    loader.dataset.set_epoch(epoch)
    with batches(loader) as micro_batches:  # its workers end with the epoch, however it ends
        for _ in range(n_steps):
            step_loss = torch.zeros((), device=device)
            for micro in range(accum_steps):
                waveform, target = next(micro_batches)
                waveform = waveform.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                with torch.no_grad():
                    spec = frontend(waveform, generator=erase_gen)
                spec, target = mixup(spec, target, generator=mix_gen)
                with maybe_no_sync(ddp_model, sync=micro == accum_steps - 1):
                    with autocast(device, amp):
                        logits = ddp_model(spec)
                    loss = criterion(logits.float(), target.float())
                    (loss / accum_steps).backward()
                step_loss += loss.detach() / accum_steps
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if clamp_positions:
                clamp_dcls(model)
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            scheduler.step_update(num_updates=step)
            on_step(step, step_loss)
            if stop():
                break
    return step


def evaluate(
    model: nn.Module,
    ema: ModelEma | None,
    frontend: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool,
    main: bool,
    task: Any = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """mAP, mAUC, d', per-class AP (and ``*_ema`` of the EMA weights) on the main rank.

    ``task`` (`dcls_audio.train.tasks.Task`, None = multilabel) sets the output activation and
    adds its metrics. Every rank takes part in the gathers; other ranks get None. ``stop()``
    true on any rank ends the evaluation early with `EvaluationStopped` on every rank.
    """
    activation = task.activation if task is not None else "sigmoid"
    score = task.metrics if task is not None else compute_metrics
    metrics: dict[str, Any] | None = None
    amp_dtype = torch.bfloat16 if amp else None
    for weights, suffix in ((model, ""), (ema.module if ema else None, "_ema")):
        if weights is None:
            continue
        scores, targets = predict(
            weights, frontend, loader, device, amp_dtype=amp_dtype, activation=activation,
            stop=stop,
        )  # fmt: skip
        if main:
            found = score(scores, targets)
            found["num_eval_clips"] = int(scores.shape[0])
            metrics = {**(metrics or {}), **{f"{k}{suffix}": v for k, v in found.items()}}
    return metrics


def _preempted(stop: StopSignal, step: int, run_dir: Path, logger: RunLogger) -> NoReturn:
    """Report the checkpoint saved on a stop signal and end the run with `Preempted`.

    Every rank calls it (the signal's name comes from a collective).
    """
    stop.requested()  # the signal every rank exits with
    message = f"stopped by {stop.name()} at step {step}; resume in {run_dir}"
    logger.print(f"{stop.name()}: saved step {step} to {run_dir / ckpt.LAST}")
    logger.print(message)
    raise stop.preempted(message)


def fit(
    model: nn.Module,
    ddp_model: nn.Module,
    ema: ModelEma | None,
    loaders: Any,
    frontend: nn.Module,
    mixup: Callable,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: ckpt.RunState,
    *,
    epochs: int,
    steps_per_epoch: int,
    total_steps: int,
    accum_steps: int,
    eval_every: int,
    seed: int,
    rank: int,
    main: bool,
    device: torch.device,
    amp: bool,
    clamp_positions: bool,
    step_log: StepLog,
    logger: RunLogger,
    run_dir: Path,
    config: dict[str, Any],
    class_names: list[str],
    session_start: float,
    stop: StopSignal,
    epoch_rng: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    task: Any = None,
) -> dict[str, Any] | None:
    """Train until ``total_steps``, evaluating and saving last.pt/best.pt after each epoch.

    A run resumed inside an epoch (``state.epoch_step`` > 0) continues that epoch's sampler
    order and its (mixup, erasing) generators from ``epoch_rng``. On a stop signal the step's
    checkpoint is saved and `Preempted` raised; a signal during an evaluation ends it and saves
    the epoch with ``state.eval_pending``, and the resumed run evaluates first. Returns the final
    metrics on the main rank.
    """

    def step_hook(step: int, loss: torch.Tensor) -> None:
        step_log(step, loss)
        if on_step is not None:
            on_step(step)

    def save(best: dict[str, Any] | None, generators: Any = None) -> None:
        epoch_rng = None if generators is None else [g.get_state() for g in generators]
        rngs = all_gather_object({**ckpt.capture_rng_state(), "epoch": epoch_rng})  # collective
        if main:
            snap = ckpt.snapshot(
                model=model, ema=ema.module if ema else None, optimizer=optimizer,
                scheduler=scheduler, state=state, rngs=rngs, steps_per_epoch=steps_per_epoch,
                config=config, class_names=class_names,
            )  # fmt: skip
            snap["wall_time_s"] = state.wall_time_s + time.time() - session_start
            ckpt.save(run_dir, snap, best)
        barrier()

    def evaluate_epoch(epoch: int) -> dict[str, Any] | None:
        """Evaluate the weights after ``epoch``; their metrics when they are the best so far."""
        state.eval_pending = True  # saved so if a stop signal ends the evaluation
        metrics = evaluate(
            model, ema, frontend, loaders.eval, device, amp, main, task, stop.pending
        )
        state.eval_pending = False
        if not main:
            return None
        state.last_eval = {"step": state.step, "metrics": metrics}
        logger.eval_report(epoch, state.step, metrics)
        score = metrics[task.selection if task is not None else "map"]
        if score > state.best_score:  # False for NaN
            state.best_score = float(score)
            return metrics
        return None

    try:
        if state.eval_pending:  # a stop ended the evaluation of the saved weights: do it now
            save(evaluate_epoch(state.epoch - 1))
        while state.epoch < epochs and state.step < total_steps:
            epoch, done = state.epoch, state.epoch_step
            if done:  # resumed inside the epoch: the saved generators, the global RNGs restored
                generators = tuple(torch.Generator().set_state(g) for g in epoch_rng)
            else:
                generators = seed_epoch(seed, epoch, rank)
            loaders.sampler.set_epoch(epoch, start=done * accum_steps * loaders.train.batch_size)
            step_log.start(epoch, state.step)
            start = state.step
            state.step = train_epoch(
                model, ddp_model, loaders.train, frontend, mixup, criterion, optimizer,
                scheduler, ema, epoch=epoch, step=state.step, n_steps=min(steps_per_epoch - done,
                total_steps - state.step), accum_steps=accum_steps, generators=generators,
                device=device, amp=amp, clamp_positions=clamp_positions, on_step=step_hook,
                stop=stop.requested,
            )  # fmt: skip
            stats = step_log.end()
            state.train_time_s += stats["train_time_s"]
            state.train_samples += stats["samples"]
            state.epoch_step = done + state.step - start
            if state.epoch_step < steps_per_epoch and state.step < total_steps:  # stopped early
                save(None, generators)
                _preempted(stop, state.step, run_dir, logger)
            state.epoch, state.epoch_step = epoch + 1, 0
            for weights in (model, ema.module if ema else None):  # one model to evaluate, save
                if weights is not None:
                    sync_buffers(weights)
            logger.record("epoch", {"epoch": epoch, **stats}, step=state.step)
            finished = state.epoch >= epochs or state.step >= total_steps
            best = None
            if finished or (eval_every > 0 and state.epoch % eval_every == 0):
                best = evaluate_epoch(epoch)
            save(best)
            if state.step < total_steps and stop.requested():  # at the epoch's last step
                _preempted(stop, state.step, run_dir, logger)

        # the final metrics: those of the last evaluation if it saw the final weights
        final = state.last_eval["metrics"] if main and state.last_eval else None
        if main and state.last_eval and state.last_eval["step"] != state.step:
            final = None
        if not broadcast_object(final is not None):
            final = evaluate(
                model, ema, frontend, loaders.eval, device, amp, main, task, stop.pending
            )
    except EvaluationStopped:
        save(None)  # the trained weights; their evaluation (state.eval_pending) comes first
        _preempted(stop, state.step, run_dir, logger)
    return final

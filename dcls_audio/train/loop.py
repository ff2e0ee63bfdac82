"""The training loop: epochs (train, evaluate, checkpoint, stop) and the optimizer step.

`fit` runs the epochs; `train_epoch` runs one epoch's optimizer steps, each over
``accum_steps`` micro-batches (DDP gradient sync only on the last), followed by the
position clamp, the EMA update and the per-iteration schedule. Every random draw of an epoch
comes from (seed, epoch, rank), so a run resumed from an epoch boundary replays it exactly.
What the loop works with is in `dcls_audio.train.parts`: the `Trainee` (weights it updates),
the `Recipe` (how a step is taken), the `Plan` (how long), the `RunIO` (where it reports and
saves) and the `RunState` (its progress).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch
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
from dcls_audio.train.frames import emit_frames
from dcls_audio.train.parts import Plan, Recipe, RunIO, Trainee, autocast, seed_epoch
from dcls_audio.train.preempt import batches
from dcls_audio.workers import worker_died


def fetch_step(source: Iterator, accum_steps: int, stopping: Callable[[], bool]) -> list | None:
    """The micro-batches of one optimizer step; None when a loader worker died during a stop.

    A worker that ends after this process received a stop signal is part of the stop: the run
    saves its last complete step and exits as stopped. Without a stop it is an error.
    """
    if stopping():  # the loop stops before this step: read nothing more
        return None
    try:
        return [next(source) for _ in range(accum_steps)]
    except RuntimeError as err:
        if worker_died(err) and stopping():
            return None
        raise


def train_epoch(
    trainee: Trainee,
    recipe: Recipe,
    loader: DataLoader,
    *,
    epoch: int,
    step: int,
    n_steps: int,
    generators: tuple[torch.Generator, torch.Generator],
    on_step: Callable[..., None],
    stop: Callable[[], bool],
    stopping: Callable[[], bool],
) -> int:
    """Run up to ``n_steps`` optimizer steps of ``epoch`` from step ``step``; return the step.

    ``generators`` draw (mixup, random erasing); ``on_step(step, loss, terms)`` receives each
    step's loss (a device tensor, not synchronised) and its named parts (the frame loss). A step
    starts once its batches are in hand and ``stop()`` (all ranks agree) is false;
    ``stopping()`` says whether this process has a stop signal, before any rank has acted on
    it. The loader's sampler carries the epoch.
    """
    model, r, device = trainee.model, recipe, recipe.device
    model.train()
    r.frontend.train()
    emit_frames(model, r.frames is not None)
    mix_gen, erase_gen = generators
    # its workers end with the epoch, or with the run when persistent; none start on a stop
    with batches(() if stopping() else loader) as loader_batches:
        for _ in range(n_steps):
            micro_batches = fetch_step(loader_batches, r.accum_steps, stopping)
            if stop():
                break
            assert micro_batches is not None  # a stop signal here is a stop on every rank
            step_loss = torch.zeros((), device=device)
            terms = {"frame_loss": torch.zeros((), device=device)} if r.frames else {}
            for micro, (waveform, target, *rest) in enumerate(micro_batches):
                events, strong, *index = rest if r.strong_items else (None, None, *rest)
                waveform = waveform.to(device, non_blocking=True)  # index: stored teacher logits
                target = target.to(device, non_blocking=True)
                with torch.no_grad():
                    spec = r.frontend(waveform, generator=erase_gen)
                mixed, target = r.mixup(spec, target, generator=mix_gen)
                if r.channels_last:
                    mixed = mixed.contiguous(memory_format=torch.channels_last)
                if r.teacher is not None:  # its targets of the unmixed clips, mixed alike
                    soft = r.teacher.targets(spec, index[0] if index else None, r.mixup)
                with maybe_no_sync(trainee.ddp_model, sync=micro == r.accum_steps - 1):
                    with autocast(device, r.amp):
                        logits = trainee.ddp_model(mixed)
                    if r.frames is not None:  # (clip, frame) logits
                        logits, frame_logits = logits
                    loss = r.task.criterion(logits.float(), target.float())
                    if r.teacher is not None:
                        loss = r.teacher.loss(loss, logits.float(), soft)
                    if r.frames is not None:
                        frame_loss = r.frames(frame_logits.float(), events, strong, r.mixup)
                        loss = loss + r.frames.weight * frame_loss
                        terms["frame_loss"] += frame_loss.detach() / r.accum_steps
                    (loss / r.accum_steps).backward()
                step_loss += loss.detach() / r.accum_steps
            r.optimizer.step()
            r.optimizer.zero_grad(set_to_none=True)
            if r.clamp_positions:
                clamp_dcls(model)
            step += 1
            if trainee.ema is not None:
                trainee.ema.update(model, step=step)
            r.scheduler.step_update(num_updates=step)
            on_step(step, step_loss, terms)
    return step


def evaluate(
    trainee: Trainee,
    recipe: Recipe,
    loader: DataLoader,
    main: bool,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """mAP, mAUC, d', per-class AP (and ``*_ema`` of the EMA weights) on the main rank.

    The recipe's task sets the output activation and adds its metrics. Every rank takes part in
    the gathers; other ranks get None. ``stop()`` true on any rank ends the evaluation early
    with `EvaluationStopped` on every rank.
    """
    task = recipe.task
    metrics: dict[str, Any] | None = None
    amp_dtype = torch.bfloat16 if recipe.amp else None
    emit_frames(trainee.model, False)  # clip logits (the EMA copy never emits)
    for weights, suffix in zip(trainee.weights(), ("", "_ema"), strict=False):
        scores, targets = predict(
            weights, recipe.frontend, loader, recipe.device, amp_dtype=amp_dtype,
            activation=task.activation, stop=stop,
        )  # fmt: skip
        if main:
            found = task.metrics(scores, targets)
            found["num_eval_clips"] = int(scores.shape[0])
            metrics = {**(metrics or {}), **{f"{k}{suffix}": v for k, v in found.items()}}
    return metrics


def _preempted(io: RunIO, step: int) -> NoReturn:
    """Report the checkpoint saved on a stop signal and end the run with `Preempted`.

    Every rank calls it (the signal's name comes from a collective).
    """
    stop = io.stop
    stop.requested()  # the signal every rank exits with
    message = f"stopped by {stop.name()} at step {step}; resume in {io.run_dir}"
    io.logger.print(f"{stop.name()}: saved step {step} to {io.run_dir / ckpt.LAST}")
    io.logger.print(message)
    raise stop.preempted(message)


def save_checkpoint(
    trainee: Trainee,
    recipe: Recipe,
    plan: Plan,
    io: RunIO,
    state: ckpt.RunState,
    best: dict[str, Any] | None,
    generators: tuple[torch.Generator, ...] | None = None,
) -> None:
    """Write last.pt (and best.pt with ``best``) on the main rank; every rank takes part.

    ``generators``: the (mixup, erasing) generators of an epoch stopped inside, to resume it.
    """
    epoch_rng = None if generators is None else [g.get_state() for g in generators]
    rngs = all_gather_object({**ckpt.capture_rng_state(), "epoch": epoch_rng})  # collective
    if plan.main:
        snap = ckpt.snapshot(
            model=trainee.model, ema=trainee.ema.module if trainee.ema else None,
            optimizer=recipe.optimizer, scheduler=recipe.scheduler, state=state, rngs=rngs,
            steps_per_epoch=plan.steps_per_epoch, config=io.config, class_names=io.class_names,
        )  # fmt: skip
        snap["wall_time_s"] = state.wall_time_s + time.time() - io.session_start
        ckpt.save(io.run_dir, snap, best)
    barrier()


def fit(
    trainee: Trainee,
    recipe: Recipe,
    loaders: Any,
    plan: Plan,
    io: RunIO,
    state: ckpt.RunState,
    epoch_rng: list[Any] | None = None,
) -> dict[str, Any] | None:
    """Train until ``plan.total_steps``, evaluating and saving last.pt/best.pt after each epoch.

    ``loaders`` holds ``train``, ``eval`` and the train ``sampler``. A run resumed inside an
    epoch (``state.epoch_step`` > 0) continues that epoch's sampler order and its (mixup,
    erasing) generators from ``epoch_rng``. On a stop signal the step's checkpoint is saved and
    `Preempted` raised; a signal during an evaluation ends it and saves the epoch with
    ``state.eval_pending``, and the resumed run evaluates first. Returns the final metrics on
    the main rank.
    """

    def save(best: dict[str, Any] | None, generators: Any = None) -> None:
        save_checkpoint(trainee, recipe, plan, io, state, best, generators)

    def step_hook(step: int, loss: torch.Tensor, terms: dict | None = None) -> None:
        io.step_log(step, loss, terms)
        if io.on_step is not None:
            io.on_step(step)

    def evaluate_epoch(epoch: int) -> dict[str, Any] | None:
        """Evaluate the weights after ``epoch``; their metrics when they are the best so far."""
        state.eval_pending = True  # saved so if a stop signal ends the evaluation
        metrics = evaluate(trainee, recipe, loaders.eval, plan.main, io.stop.pending)
        state.eval_pending = False
        if not plan.main:
            return None
        state.last_eval = {"step": state.step, "metrics": metrics}
        io.logger.eval_report(epoch, state.step, metrics)
        score = metrics[recipe.task.selection]
        if score > state.best_score:  # False for NaN
            state.best_score = float(score)
            return metrics
        return None

    try:
        if state.eval_pending:  # a stop ended the evaluation of the saved weights: do it now
            save(evaluate_epoch(state.epoch - 1))
        while state.epoch < plan.epochs and state.step < plan.total_steps:
            epoch, done = state.epoch, state.epoch_step
            if done:  # resumed inside the epoch: the saved generators, the global RNGs restored
                generators = tuple(torch.Generator().set_state(g) for g in epoch_rng)
            else:
                generators = seed_epoch(plan.seed, epoch, plan.rank)
            first = done * recipe.accum_steps * loaders.train.batch_size
            loaders.sampler.set_epoch(epoch, start=first)
            io.step_log.start(epoch, state.step)
            start = state.step
            state.step = train_epoch(
                trainee, recipe, loaders.train, epoch=epoch, step=state.step,
                n_steps=min(plan.steps_per_epoch - done, plan.total_steps - state.step),
                generators=generators, on_step=step_hook, stop=io.stop.requested,
                stopping=io.stop.pending,
            )  # fmt: skip
            stats = io.step_log.end()
            state.train_time_s += stats["train_time_s"]
            state.train_samples += stats["samples"]
            state.epoch_step = done + state.step - start
            if state.epoch_step < plan.steps_per_epoch and state.step < plan.total_steps:
                save(None, generators)  # stopped inside the epoch
                _preempted(io, state.step)
            state.epoch, state.epoch_step = epoch + 1, 0
            for weights in trainee.weights():  # one model to evaluate and save on every rank
                sync_buffers(weights)
            io.logger.record("epoch", {"epoch": epoch, **stats}, step=state.step)
            finished = state.epoch >= plan.epochs or state.step >= plan.total_steps
            best = None
            if finished or (plan.eval_every > 0 and state.epoch % plan.eval_every == 0):
                best = evaluate_epoch(epoch)
            save(best)
            if state.step < plan.total_steps and io.stop.requested():  # at the epoch's last step
                _preempted(io, state.step)

        # the final metrics: those of the last evaluation if it saw the final weights
        final = state.last_eval["metrics"] if plan.main and state.last_eval else None
        if plan.main and state.last_eval and state.last_eval["step"] != state.step:
            final = None
        if not broadcast_object(final is not None):
            final = evaluate(trainee, recipe, loaders.eval, plan.main, io.stop.pending)
    except EvaluationStopped:
        save(None)  # the trained weights; their evaluation (state.eval_pending) comes first
        _preempted(io, state.step)
    return final

"""Training entry point: ``run(cfg) -> metrics`` for one seed of one configuration.

Usage (``train.py`` and ``dcls-audio-train`` call `run`)::

    python train.py                                   # ConvNeXt-T + DCLS-Gauss, AudioSet, seed 0
    python train.py model=convformer_s18 optim=lamb conv=dsc seed=1
    python train.py data=synthetic model=convnext_atto trainer.max_steps=20   # CPU smoke run
    torchrun --nproc_per_node 8 train.py trainer.batch_size=128               # one node, DDP
    python train.py -m experiment=table1/convnext_t_dcls_gauss seed=0,1,2 hydra/launcher=slurm

The run directory is Hydra's ``hydra.run.dir``. It receives ``metrics.jsonl``, ``last.pt`` (every
epoch), ``best.pt`` (best mAP) and ``results.json``. Starting again in the same directory (for
example a SLURM requeue, or ``hydra.run.dir=<dir>`` by hand) resumes from ``last.pt``; epochs
are replayed from their start with every random draw derived from (seed, epoch, rank), so a
resumed run ends with the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dcls_audio import runfiles as results_io
from dcls_audio.train import checkpoint as ckpt
from dcls_audio.train.distributed import (
    accumulation_steps,
    barrier,
    broadcast_object,
    describe_device,
    distributed_session,
    pick_device,
    resolve_env,
    wrap_ddp,
)
from dcls_audio.train.log import RunLogger, StepLog
from dcls_audio.train.loop import fit
from dcls_audio.train.optim import build_scheduler
from dcls_audio.train.parts import ModelEma, Plan, Recipe, RunIO, Trainee, configure_determinism
from dcls_audio.train.preempt import Preempted, StopSignal, shutdown_workers


def hydra_run_dir() -> str | None:
    """Hydra's output directory, or None outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except ValueError:
        return None


def run(
    cfg: DictConfig,
    run_dir: str | os.PathLike | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the final metrics (also in results.json).

    ``run_dir`` defaults to Hydra's output directory. ``on_step(step)`` is called after every
    optimizer step (profiling, tests that interrupt a run).
    """
    from dcls_audio.train.loaders import resolve_classes, resolve_data_files

    wall_start = time.time()
    env = resolve_env()
    device = pick_device(cfg.trainer.device, env.local_rank, env.world_size)
    files = [resolve_data_files(cfg.data, k) for k in ("train_files", "eval_files")]
    resolve_classes(cfg, files)  # data.num_classes null: from the packed files' class list
    chosen = run_dir if run_dir is not None else hydra_run_dir()
    if chosen is None:
        raise ValueError("run(cfg) needs run_dir= when it is not called from a Hydra app")
    with distributed_session(env, device):
        # torchrun ranks each resolve hydra.run.dir (with ${now:...}); rank 0's choice wins.
        out = Path(str(broadcast_object(os.path.abspath(chosen))))
        try:
            return _train(cfg, env, device, out, files, wall_start, on_step)
        except BaseException as err:  # a stop or an error: release the run's objects now
            release_frames(err)
            raise


def release_frames(err: BaseException | None) -> None:
    """Clear the local variables of the frames in ``err``'s traceback and those it chains.

    A traceback kept until the interpreter's exit keeps the DDP model and so its gloo process
    group, whose threads then wait for the GIL that the exiting thread holds while it joins
    them: a rank that never ends. The tracebacks still print.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__


def _train(
    cfg: DictConfig,
    env: Any,
    device: torch.device,
    out: Path,
    files: list[list[str]],
    wall_start: float,
    on_step: Callable[[int], None] | None,
) -> dict[str, Any]:
    """Body of `run` inside the process group: build, resume, fit, write results.json."""
    from dcls_audio.data.waveform import SAMPLE_RATE
    from dcls_audio.models import build_model
    from dcls_audio.train.accel import (
        check_compile,
        compile_module,
        memory_format,
        resolve_channels_last,
        warm_up,
    )
    from dcls_audio.train.distill import DistillConfig, build_teacher, results_entry
    from dcls_audio.train.finetune import build_run_optimizer, freeze_backbone, init_report
    from dcls_audio.train.frames import (
        build_frame_loss,
        event_line,
        event_scores,
        segment_scores,
        tuned_threshold,
    )
    from dcls_audio.train.loaders import (
        batch_augment,
        build_loaders,
        clip_samples,
        resolve_classes,
        tuning_loader,
    )
    from dcls_audio.train.tasks import build_task, summary_line, write_confusion

    tr = cfg.trainer
    config = OmegaConf.to_container(cfg, resolve=True)
    main, seed = env.is_main, int(cfg.seed)
    accum = accumulation_steps(int(tr.global_batch_size), int(tr.batch_size), env.world_size)
    layout = resolve_channels_last(tr.channels_last, device, str(cfg.conv.type))
    compile_mode = check_compile(tr.compile, device, env.world_size)
    configure_determinism(bool(tr.deterministic), device)
    partial = ckpt.prepare_run_dir(out) if main else []  # and remove the files of killed saves
    barrier()
    last_path, results_path = out / ckpt.LAST, out / results_io.RESULTS_FILE
    names = resolve_classes(cfg, files)
    # A damaged or incompatible last.pt must stop the run before anything else happens.
    saved, changed = ckpt.read_resume(last_path, config)

    distill = DistillConfig.from_config(cfg.distill)
    loaders = build_loaders(
        cfg.data, cfg.augment, *files, batch_size=int(tr.batch_size),
        eval_batch_size=tr.eval_batch_size, max_eval_samples=tr.max_eval_samples, seed=seed,
        rank=env.rank, world_size=env.world_size, device=device,
        with_index=distill.mode == "stored",
    )  # fmt: skip
    steps_per_epoch = len(loaders.train) // accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"trainer.global_batch_size={tr.global_batch_size} exceeds the "
            f"{len(loaders.train.dataset)} training clips of data.train_files; lower it"
        )
    epochs = int(tr.epochs)
    total_steps = epochs * steps_per_epoch
    if tr.max_steps:
        total_steps = min(total_steps, int(tr.max_steps))

    # Model, optimizer, schedule (built identically on every rank from the seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.conv).to(device, memory_format=memory_format(layout))
    params = sum(p.numel() for p in model.parameters())
    optimizer = build_run_optimizer(model, cfg.optim, int(tr.global_batch_size))
    scheduler = build_scheduler(
        optimizer, epochs, int(tr.warmup_epochs), steps_per_epoch,
        lr_min=float(cfg.optim.lr_min), warmup_lr_init=float(cfg.optim.warmup_lr_init),
    )  # fmt: skip
    ema = ModelEma(model, decay=float(tr.ema_decay)) if tr.ema else None
    if main:
        ckpt.check_space(out, model, ema is not None)
    frontend, mixup = batch_augment(cfg.augment, device)
    task = build_task(cfg.data.task, float(cfg.augment.label_smoothing), mixup)
    num_classes = int(cfg.data.num_classes)
    teacher = build_teacher(distill, task.name, num_classes, device, loaders.train.dataset)
    frame_loss = build_frame_loss(cfg.frames, model, loaders.train.dataset, device, files[0])

    wandb_cfg = OmegaConf.to_container(cfg.wandb, resolve=True)
    logger = RunLogger(out, active=main, wandb_cfg=wandb_cfg, config=config)
    if partial:
        logger.print(f"removed the temporary files of a save that did not finish: {partial}")
    state, epoch_rng = ckpt.RunState(), None
    if saved is not None:
        state, epoch_rng = ckpt.restore(
            saved, last_path, model=model, ema=ema.module if ema else None, optimizer=optimizer,
            scheduler=scheduler, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
            rank=env.rank, world_size=env.world_size,
        )  # fmt: skip
        logger.print(
            f"resuming from {last_path}: epoch {state.epoch}, step {state.step}"
            + (f" (changed: {', '.join(changed)})" if changed else "")
        )
        logger.record("resume", {"epoch": state.epoch, "changed": changed}, step=state.step)
    init = init_report(model)  # model.pretrained: what loaded, which tensors are new
    if init is not None:
        logger.print(init["summary"])
        logger.record("init", init, step=state.step)
    freeze_backbone(model, optimizer, int(tr.freeze_backbone_epochs), lambda: state.epoch)
    amp = bool(tr.amp) and (device.type == "cuda" or bool(tr.amp_cpu))
    device_info = describe_device(device, amp, env.world_size)
    device_info.update(channels_last=layout, compile=compile_mode)
    logger.print("device: " + ", ".join(f"{k} {v}" for k, v in device_info.items() if v))
    logger.print(
        f"run dir {out} | world {env.world_size} on {device} | batch {tr.batch_size} x "
        f"{env.world_size} x {accum} accumulation = {tr.global_batch_size} | "
        f"{steps_per_epoch} steps/epoch, {total_steps} total | {params:,} parameters | "
        f"lr {optimizer.param_groups[0].get('initial_lr', 0):.3e}"
    )
    if results_path.exists() and state.step >= total_steps:
        logger.print(f"{results_path} exists and training is complete; nothing to do")
        logger.close()
        return results_io.metrics_of(results_io.read_results(results_path))

    ddp_model = (
        wrap_ddp(model, device, bool(tr.find_unused_parameters)) if env.distributed else model
    )
    if compile_mode != "none":  # timed per-layer choices first, eagerly, then trace
        with torch.no_grad():
            spec = frontend.eval()(torch.zeros(1, clip_samples(cfg.data), device=device))
        warm_up(model, (int(tr.batch_size), *spec.shape[1:]), device, amp=amp,
                channels_last=layout)  # fmt: skip
        ddp_model = compile_module(ddp_model, compile_mode)
    step_log = StepLog(
        logger, optimizer, every=int(tr.log_every), epochs=epochs, total_steps=total_steps,
        global_batch_size=int(tr.global_batch_size), device=device,
    )  # fmt: skip
    stop = StopSignal(device)
    trainee = Trainee(model=model, ddp_model=ddp_model, ema=ema)
    recipe = Recipe(
        frontend=frontend, mixup=mixup, task=task, optimizer=optimizer, scheduler=scheduler,
        accum_steps=accum, clamp_positions=bool(tr.clamp_positions), amp=amp, device=device,
        teacher=teacher, channels_last=layout, frames=frame_loss,
        strong_items=bool(getattr(loaders.train.dataset, "has_strong", False)),
    )  # fmt: skip
    plan = Plan(
        epochs=epochs, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        eval_every=int(tr.eval_every or 0), seed=seed, rank=env.rank, main=main,
    )  # fmt: skip
    io = RunIO(
        run_dir=out, logger=logger, step_log=step_log, stop=stop, config=config,
        class_names=names, session_start=wall_start, on_step=on_step,
    )  # fmt: skip
    try:
        with stop:
            metrics = fit(trainee, recipe, loaders, plan, io, state, epoch_rng)
        eval_set = getattr(loaders.eval.dataset, "dataset", loaders.eval.dataset)  # a Subset's
        if getattr(eval_set, "has_strong", False) and task.name == "multilabel":
            clip_s, mask = clip_samples(cfg.data) / SAMPLE_RATE, eval_set.strong_classes
            tune = tuning_loader(cfg.data, files[0], int(cfg.frames.get("tune_clips", 0)),
                                 int(tr.eval_batch_size or tr.batch_size), env.rank,
                                 env.world_size, device)  # fmt: skip
            tuned = None  # segment F1 also at a threshold chosen on training clips
            if tune is not None:
                scored = segment_scores(model, frontend, tune, device, clip_s, main, amp)
                tuned = tuned_threshold(scored, mask, clip_s)
            found = event_scores(model, frontend, loaders.eval, device, mask, clip_s, main, amp,
                                 tuned)  # fmt: skip
            if main:
                metrics = {**metrics, **found}
                logger.print(event_line(found))
        if main:
            doc = results_io.build_results(
                metrics, params=params, seed=seed, config=config,
                wall_time_s=state.wall_time_s + time.time() - wall_start,
                train_samples_per_s=state.train_samples / max(state.train_time_s, 1e-9),
                epochs_trained=state.epoch, steps=state.step, world_size=env.world_size,
                class_names=names, device=device_info, task=task.name,
                init=model.build_info["init_record"], distill=results_entry(distill),
            )  # fmt: skip
            results_io.write_json(results_path, doc)
            if task.name == "multiclass":
                write_confusion(out, metrics["confusion_matrix"], names)
                logger.print(summary_line(metrics))
            logger.print(f"results written to {results_path}: mAP {metrics['map']:.4f}")
        metrics = broadcast_object(metrics)
    except Preempted:
        stop.forward()  # e.g. submitit's requeue, now that last.pt holds this step
        raise
    except Exception as err:
        if stop.interrupted:  # Ctrl-C twice in C++ code that reports it as its own error
            raise KeyboardInterrupt from err  # (torch.save's writer: "unexpected pos")
        raise
    finally:
        shutdown_workers(loaders.train)  # persistent: they live until the run ends
        logger.close()
    return metrics

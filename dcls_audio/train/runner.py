"""Training entry point: ``run(cfg) -> metrics`` for one seed of one configuration.

Usage (the Hydra shim ``train.py`` calls `run`)::

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

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, Subset

from dcls_audio.train import checkpoint as ckpt_io
from dcls_audio.train.distributed import (
    accumulation_steps,
    all_gather_object,
    barrier,
    broadcast_object,
    distributed_session,
    pick_device,
    resolve_env,
)
from dcls_audio.train.log import RunLogger
from dcls_audio.train.loop import (
    ModelEma,
    TrainContext,
    configure_determinism,
    evaluate,
    train_one_epoch,
)
from dcls_audio.train.optim import build_optimizer, build_scheduler
from dcls_audio.train.paths import class_names as load_names
from dcls_audio.train.paths import git_commit, hydra_run_dir, resolve_data_files, write_json_atomic

RESULTS = "results.json"
# results.json entries that describe the run rather than hold a metric.
RESULT_INFO_KEYS = (
    "params",
    "seed",
    "config",
    "commit",
    "wall_time_s",
    "train_samples_per_s",
    "epochs_trained",
    "steps",
    "world_size",
    "class_names",
)
BEST_KEYS = ("model", "ema", "config", "class_names", "epoch", "step", "best_map")
# Keys whose change makes an existing last.pt unusable for the run being started.
RESUME_KEYS = ("model", "conv", "optim", "data.num_classes", "trainer.global_batch_size")


def _select(cfg: dict, dotted: str) -> Any:
    """``cfg['a']['b']`` for ``'a.b'`` (None when absent)."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _check_resume_config(saved: dict, current: dict, path: Path) -> list[str]:
    """Raise when last.pt was trained with an incompatible config; list other changed keys."""
    bad = [k for k in RESUME_KEYS if _select(saved, k) != _select(current, k)]
    if bad:
        raise ckpt_io.CheckpointError(
            f"{path} was written with a different {', '.join(bad)} than this run; resume with "
            "the same configuration or choose a new run directory (hydra.run.dir=...)"
        )
    return [k for k in ("seed", "data", "trainer") if saved.get(k) != current.get(k)]


def run(
    cfg: DictConfig,
    run_dir: str | os.PathLike | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the final metrics (also in results.json).

    ``run_dir`` defaults to Hydra's output directory. ``on_step(step)`` is called after every
    optimizer step (profiling, tests that interrupt a run).
    """
    wall_start = time.time()
    env = resolve_env()
    device = pick_device(cfg.trainer.device, env.local_rank)
    train_files = resolve_data_files(cfg.data, "train_files")
    eval_files = resolve_data_files(cfg.data, "eval_files")
    tr = cfg.trainer
    accum = accumulation_steps(int(tr.global_batch_size), int(tr.batch_size), env.world_size)
    chosen = run_dir if run_dir is not None else hydra_run_dir()
    if chosen is None:
        raise ValueError("run(cfg) needs run_dir= when it is not called from a Hydra app")
    with distributed_session(env, device):
        # torchrun ranks each resolve hydra.run.dir (with ${now:...}); rank 0's choice wins.
        out = Path(str(broadcast_object(os.path.abspath(chosen))))
        return _train(cfg, env, device, out, train_files, eval_files, accum, wall_start, on_step)


def _waveform_augment(data: DictConfig) -> Any:
    """Training clips' roll + speed perturbation from ``data.speed_p``, ``data.speed_range``."""
    from dcls_audio.data import WaveformAugment

    speed_p, speed_range = data.get("speed_p", 0.5), data.get("speed_range", (0.5, 1.5))
    try:
        low, high = (float(r) for r in speed_range)
        return WaveformAugment(speed_p=float(speed_p), speed_range=(low, high))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"data.speed_p={speed_p!r}, data.speed_range={speed_range!r}: expected a probability "
            f"in [0, 1] and [low, high] rates with 0 < low <= high ({err})"
        ) from None


def _train(
    cfg: DictConfig,
    env: Any,
    device: torch.device,
    out: Path,
    train_files: Sequence[str],
    eval_files: Sequence[str],
    accum: int,
    wall_start: float,
    on_step: Callable[[int], None] | None,
) -> dict[str, Any]:
    """Body of `run` inside the process group."""
    from dcls_audio.data import AudioSetHDF5, LogMelFrontend, MultiLabelMixup
    from dcls_audio.models import build_model
    from dcls_audio.train.evaluate import ShardedEvalSampler

    tr, data = cfg.trainer, cfg.data
    config = OmegaConf.to_container(cfg, resolve=True)
    configure_determinism(bool(tr.get("deterministic", False)), device)
    main = env.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    last_path, results_path = out / ckpt_io.LAST, out / RESULTS
    seed = int(cfg.seed)
    class_names = load_names(data)
    # A damaged last.pt must stop the run before anything else happens.
    saved = ckpt_io.load_checkpoint(last_path) if last_path.exists() else None
    changed = _check_resume_config(saved["config"], config, last_path) if saved else []

    # Data
    augment = _waveform_augment(data)
    train_ds = AudioSetHDF5(
        train_files, int(data.num_classes), train=True, seed=seed, augment=augment
    )
    eval_ds = AudioSetHDF5(eval_files, int(data.num_classes), train=False)
    if tr.get("max_eval_samples"):
        eval_ds = Subset(eval_ds, range(min(int(tr.max_eval_samples), len(eval_ds))))
    sampler = DistributedSampler(
        train_ds, env.world_size, env.rank, shuffle=True, seed=seed, drop_last=True
    )
    workers = int(data.num_workers)
    pin = bool(data.get("pin_memory", True)) and device.type == "cuda"
    loader = DataLoader(
        train_ds,
        int(tr.batch_size),
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=False,
    )
    eval_bs = int(tr.get("eval_batch_size") or tr.batch_size)
    eval_loader = DataLoader(
        eval_ds,
        eval_bs,
        sampler=ShardedEvalSampler(len(eval_ds), env.rank, env.world_size),
        num_workers=workers,
        pin_memory=pin,
    )
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"trainer.global_batch_size={tr.global_batch_size} exceeds the {len(train_ds)} "
            f"training clips of data.train_files; lower trainer.global_batch_size"
        )

    # Model, optimizer, schedule (built identically on every rank from the seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.conv).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, cfg.optim, int(tr.global_batch_size))
    epochs = int(tr.epochs)
    scheduler = build_scheduler(
        optimizer,
        epochs,
        int(tr.warmup_epochs),
        steps_per_epoch,
        lr_min=float(cfg.optim.get("lr_min", 1e-6)),
        warmup_lr_init=float(cfg.optim.get("warmup_lr_init", 0.0)),
    )
    ema = ModelEma(model, decay=float(tr.ema_decay)) if tr.ema else None
    frontend = LogMelFrontend(erase_p=float(data.get("erase_p", 0.25))).to(device)
    mixup = MultiLabelMixup(
        alpha=float(data.get("mixup_alpha", 0.8)),
        label_smoothing=float(data.get("label_smoothing", 0.1)),
        enabled=bool(data.get("mixup", True)),
    )

    # Resume
    state = {
        "epoch": 0,
        "step": 0,
        "best_map": float("-inf"),
        "train_time_s": 0.0,
        "train_samples": 0,
        "wall_time_s": 0.0,
        "last_eval": None,
    }
    logger = RunLogger(out, active=main, wandb_cfg=_plain(cfg.get("wandb")), config=config)
    if saved is not None:
        if saved.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
            raise ckpt_io.CheckpointError(
                f"{last_path} has {saved['steps_per_epoch']} optimizer steps per epoch but this "
                f"run has {steps_per_epoch} (different data or batch size); use a new run dir"
            )
        model.load_state_dict(saved["model"])
        if ema is not None:
            ema.module.load_state_dict(saved["ema"] if saved["ema"] is not None else saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng = saved.get("rng") or []
        if len(rng) == env.world_size:
            ckpt_io.restore_rng_state(rng[env.rank])
        for key in state:
            state[key] = saved.get(key, state[key])
        logger.print(
            f"resuming from {last_path}: epoch {state['epoch']}, step {state['step']}"
            + (f" (changed: {', '.join(changed)})" if changed else "")
        )
        logger.record("resume", {"epoch": state["epoch"], "changed": changed}, step=state["step"])

    ddp_model: torch.nn.Module = model
    if env.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(tr.get("find_unused_parameters", False)),
            gradient_as_bucket_view=True,
        )
    max_steps = int(tr.max_steps) if tr.get("max_steps") else None
    amp = bool(tr.amp) and (device.type == "cuda" or bool(tr.get("amp_cpu", False)))
    ctx = TrainContext(
        model=model,
        ddp_model=ddp_model,
        frontend=frontend,
        mixup=mixup,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        loader=loader,
        sampler=sampler,
        device=device,
        accum_steps=accum,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        seed=seed,
        rank=env.rank,
        global_batch_size=int(tr.global_batch_size),
        amp=amp,
        clamp_positions=bool(tr.clamp_positions),
        max_steps=max_steps,
        log_every=int(tr.get("log_every", 50)),
        logger=logger,
        on_step=on_step,
    )
    if state["step"] != state["epoch"] * steps_per_epoch and state["step"] < ctx.total_steps:
        raise ckpt_io.CheckpointError(
            f"{last_path} stopped inside epoch {state['epoch']} at trainer.max_steps="
            f"{state['step']}; it cannot be extended. Start a new run directory."
        )
    logger.print(
        f"run dir {out} | world {env.world_size} on {device} | batch {tr.batch_size} x "
        f"{env.world_size} x {accum} accumulation = {tr.global_batch_size} | "
        f"{steps_per_epoch} steps/epoch, {ctx.total_steps} total | {params:,} parameters | "
        f"lr {optimizer.param_groups[0].get('initial_lr', 0):.3e}"
    )
    if results_path.exists() and state["step"] >= ctx.total_steps:
        logger.print(f"{results_path} exists and training is complete; nothing to do")
        logger.close()
        results = json.loads(results_path.read_text())
        return {k: v for k, v in results.items() if k not in RESULT_INFO_KEYS}

    def snapshot(extra_time: float) -> dict[str, Any]:
        rngs = all_gather_object(ckpt_io.capture_rng_state())
        return {
            "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None,
            "sampler_epoch": state["epoch"],
            "rng": rngs,
            "steps_per_epoch": steps_per_epoch,
            "config": config,
            "class_names": class_names,
            **state,
            "wall_time_s": state["wall_time_s"] + extra_time,
        }

    def do_eval() -> dict[str, Any] | None:
        metrics = evaluate(model, frontend, eval_loader, device, amp, main)
        if ema is not None:
            ema_metrics = evaluate(ema.module, frontend, eval_loader, device, amp, main)
            if main:
                metrics.update({f"{k}_ema": v for k, v in ema_metrics.items()})
        return metrics

    session_start = wall_start  # this process's share of the wall time starts at run()
    try:
        while state["epoch"] < epochs and state["step"] < ctx.total_steps:
            epoch = state["epoch"]
            step, stats = train_one_epoch(ctx, epoch, state["step"])
            state.update(step=step, epoch=epoch + 1)
            state["train_time_s"] += stats["train_time_s"]
            state["train_samples"] += stats["samples"]
            logger.record("epoch", {"epoch": epoch, **stats}, step=step)
            finished = state["epoch"] >= epochs or step >= ctx.total_steps
            every = int(tr.get("eval_every") or 0)
            improved = False
            if finished or (every > 0 and state["epoch"] % every == 0):
                metrics = do_eval()
                if main:
                    state["last_eval"] = {"step": step, "metrics": metrics}
                    logger.eval_report(epoch, step, metrics)
                    improved = bool(metrics["map"] > state["best_map"])  # False for NaN
                    if improved:
                        state["best_map"] = float(metrics["map"])
            snap = snapshot(time.time() - session_start)  # collective: every rank calls it
            if main:
                if improved:
                    best = {k: snap[k] for k in BEST_KEYS}
                    ckpt_io.atomic_torch_save({**best, "metrics": metrics}, out / ckpt_io.BEST)
                ckpt_io.atomic_torch_save(snap, last_path)
            barrier()

        # Final metrics: those of the last evaluation if it saw the final weights.
        metrics = None
        if main and state["last_eval"] and state["last_eval"]["step"] == state["step"]:
            metrics = state["last_eval"]["metrics"]
        if not broadcast_object(metrics is not None):
            metrics = do_eval()
        wall = state["wall_time_s"] + time.time() - session_start
        if main:
            results = {
                **{k: metrics[k] for k in metrics},
                "params": params,
                "seed": seed,
                "config": config,
                "commit": git_commit(),
                "wall_time_s": wall,
                "train_samples_per_s": state["train_samples"] / max(state["train_time_s"], 1e-9),
                "epochs_trained": state["epoch"],
                "steps": state["step"],
                "world_size": env.world_size,
                "class_names": class_names,
            }
            write_json_atomic(results, results_path)
            logger.print(f"results written to {results_path}: mAP {metrics['map']:.4f}")
        metrics = broadcast_object(metrics)
    finally:
        logger.close()
    return metrics


def _plain(node: Any) -> Any:
    """Plain container of a DictConfig node (None stays None)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

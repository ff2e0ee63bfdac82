"""Evaluate a checkpoint on AudioSet-layout HDF5 files: mAP, mAUC, d′ and per-class AP.

Usage::

    dcls-audio-evaluate --checkpoint CKPT --eval-files eval.h5 [--model M --conv C] \\
        [--batch-size 32] [--json out.json] [--raw-weights]
    torchrun --nproc_per_node 8 -m dcls_audio.evaluate --checkpoint CKPT --eval-files eval.h5

Any checkpoint :func:`dcls_audio.models.checkpoint.load_model` reads: a run's ``last.pt`` /
``best.pt`` or a foreign file (the DCLS-Audio authors' AudioSet checkpoints, official or timm
state dicts), whose architecture comes from ``--model``/``--conv`` or from the file itself.
Every clip is scored exactly once at any world size (contiguous shards, gathered and put back
in file order); EMA weights are used when the file has them unless ``--raw-weights``.
SIGTERM, SIGUSR2 or SIGINT end it at once with status 128 + the signal number (143, 140, 130),
its loader workers with it; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader

from dcls_audio.models.foreign import FORMATS


class _Progress:
    """A DataLoader seen through a tqdm bar; every other attribute is the loader's."""

    def __init__(self, loader: DataLoader, enabled: bool) -> None:
        self._loader = loader
        self._enabled = enabled

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        from tqdm import tqdm

        from dcls_audio.train.preempt import batches

        with batches(self._loader) as it:  # workers shut down when the iteration ends or stops
            bar = tqdm(
                it, total=len(self._loader), desc="eval", unit="batch", disable=not self._enabled
            )
            yield from bar


def evaluate_checkpoint(
    checkpoint: str,
    eval_files: Sequence[str],
    *,
    model: str | None = None,
    conv: str | None = None,
    fmt: str = "auto",
    batch_size: int = 32,
    prefer_ema: bool = True,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    channels_last: str = "auto",
    compile: str = "none",
) -> dict[str, Any]:
    """Metrics of one checkpoint over ``eval_files`` (each clip once, any world size).

    ``channels_last`` and ``compile``: the model's layout and torch.compile mode, as the
    trainer's ``trainer.channels_last`` and ``trainer.compile``.
    """
    from dcls_audio.data import AudioSetHDF5, LogMelFrontend
    from dcls_audio.models.checkpoint import load_model
    from dcls_audio.train.accel import prepare_inference
    from dcls_audio.train.distributed import distributed_session, pick_device, resolve_env
    from dcls_audio.train.evaluate import ShardedEvalSampler, predict
    from dcls_audio.train.loaders import saved_clip_and_task
    from dcls_audio.train.tasks import build_task
    from dcls_audio.workers import loader_options

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    env = resolve_env()
    dev = pick_device(device, env.local_rank, env.world_size)
    with distributed_session(env, dev):
        loaded = load_model(checkpoint, prefer_ema=prefer_ema, device=dev, model=model, conv=conv,
                            fmt=fmt)  # fmt: skip
        num_classes = int(loaded.config["model"]["num_classes"])
        files = [os.path.abspath(f) for f in eval_files]
        clip_samples, task_name = saved_clip_and_task(loaded.config)  # the run's clips and task
        task = build_task(task_name, 0.0)
        dataset = AudioSetHDF5(files, num_classes, train=False, clip_samples=clip_samples)
        loader = DataLoader(
            dataset,
            batch_size,
            sampler=ShardedEvalSampler(len(dataset), env.rank, env.world_size),
            **loader_options(num_workers),  # die with this process, leave signals to it
        )
        frontend = LogMelFrontend().to(dev).eval()
        start = time.time()
        batches = _Progress(loader, progress and env.is_main)
        net = prepare_inference(loaded.model, dev, channels_last, compile)
        scores, targets = predict(net, frontend, batches, dev, activation=task.activation)
        seconds = time.time() - start
    metrics = task.metrics(scores, targets)
    report = loaded.report
    return {
        **metrics,
        "num_eval_clips": int(scores.shape[0]),
        "checkpoint": str(checkpoint),
        "weights": loaded.weights,
        "model": loaded.config["model"]["name"],
        "conv": loaded.config["conv"]["name"],
        "format": report.format if report is not None else "dcls-audio",
        "eval_files": files,
        "world_size": env.world_size,
        "eval_seconds": seconds,
        "class_names": loaded.class_names,
        "is_main": env.is_main,
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dcls-audio-evaluate",
        description="Evaluate a checkpoint on HDF5 eval files: mAP, mAUC, d', per-class AP.",
    )
    p.add_argument("--checkpoint", required=True, help="a run's best.pt/last.pt or a foreign file")
    p.add_argument("--eval-files", nargs="+", required=True, help="PANNs-layout HDF5 files")
    add_scoring_arguments(p)
    p.add_argument("--json", help="write metrics, per-class AP and run info to this file")
    p.add_argument("--raw-weights", action="store_true", help="ignore EMA weights in the file")
    return p.parse_args(argv)


def add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a command that scores packed clips with a checkpoint (evaluate, teacher)."""
    p.add_argument("--model", help="zoo model of a foreign file (default: read from the file)")
    p.add_argument("--conv", help="conv config of a foreign file (default: read from the file)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="layout of the file")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch (default 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--num-workers", type=int, default=0, help="loader workers (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_speed_arguments(p)


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    """``--channels-last`` and ``--compile``, as the trainer's options of the same names."""
    from dcls_audio.train.accel import COMPILE_MODES

    p.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                   help="model layout (auto: CUDA, and DCLS models on the CPU)")  # fmt: skip
    p.add_argument("--compile", default="none", choices=COMPILE_MODES,
                   help="torch.compile mode (reduce-overhead: CUDA only)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    from dcls_audio.runfiles import write_json
    from dcls_audio.train.preempt import exit_on_signal

    args = _parse(argv)
    try:
        with exit_on_signal("dcls-audio-evaluate"):  # SIGTERM/SIGUSR2/SIGINT: exit 128 + signum
            out = evaluate_checkpoint(
                args.checkpoint, args.eval_files, model=args.model, conv=args.conv,
                fmt=args.format, batch_size=args.batch_size, prefer_ema=not args.raw_weights,
                device=args.device, num_workers=args.num_workers, progress=not args.no_progress,
                channels_last=args.channels_last, compile=args.compile,
            )  # fmt: skip
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not out.pop("is_main"):
        return 0
    print(
        f"{out['checkpoint']} ({out['model']} {out['conv']}, {out['format']} layout, "
        f"'{out['weights']}' weights) on {out['num_eval_clips']} clips: "
        f"mAP {out['map']:.4f}  mAUC {out['mauc']:.4f}  d' {out['dprime']:.3f}  "
        f"({out['num_classes_scored']} classes with positives)"
    )
    if args.json:
        write_json(args.json, out)
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

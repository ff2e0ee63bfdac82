"""Store a teacher's predictions once: logits of every packed clip in a sidecar HDF5.

Usage::

    dcls-audio-teacher --checkpoint RUN/best.pt [--checkpoint OTHER.pt ...] \\
        --data-files balanced_train.h5 unbalanced_train.h5 --out teacher_logits.h5
    torchrun --nproc_per_node 8 -m dcls_audio.teacher --checkpoint ... --out ...

Any checkpoint :func:`dcls_audio.models.checkpoint.load_model` reads (a run's ``last.pt`` /
``best.pt``, the DCLS-Audio authors' released files); several make an ensemble (the mean of
their probabilities). Each clip is scored unaugmented (no roll, speed perturbation, erasing or
mixup), as EfficientAT stores its teacher ensemble's predictions. Rows are written in blocks to
``OUT.partial``; a rerun of the same command continues after the last complete block, and the
finished file is renamed to ``OUT``. Under ``torchrun`` each block is sharded over the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from dcls_audio.data.teacher_logits import FORMAT, file_sha256
from dcls_audio.evaluate import add_scoring_arguments


def ensemble_logits(probs: list[np.ndarray], activation: str) -> np.ndarray:
    """Logits of the ensemble's mean probability (sigmoid: logit; softmax: log)."""
    mean = np.mean(np.stack(probs), axis=0).astype(np.float64)
    if activation == "sigmoid":
        mean = np.clip(mean, 1e-6, 1 - 1e-6)
        return np.log(mean) - np.log1p(-mean)
    return np.log(np.clip(mean, 1e-12, None))


def _open_partial(path: Path, names: np.ndarray, num_classes: int, attrs: dict[str, Any]) -> int:
    """Create ``path`` or check that it belongs to this command; return its rows_done."""
    if path.exists():
        with h5py.File(path, "r") as f:
            same = all(str(f.attrs.get(k)) == str(v) for k, v in attrs.items())
            if same and f["logits"].shape == (len(names), num_classes):
                return int(f.attrs["rows_done"])
        raise ValueError(
            f"{path}: a partial teacher file from another command (other checkpoints, data files "
            "or classes); delete it to start again"
        )
    with h5py.File(path, "w") as f:
        f["audio_name"] = names.astype("S20")
        f.create_dataset("logits", (len(names), num_classes), dtype=np.float16)
        f.attrs.update(attrs)
        f.attrs["rows_done"] = 0
    return 0


def write_teacher_logits(
    checkpoints: Sequence[str],
    data_files: Sequence[str],
    out: str,
    *,
    model: str | None = None,
    conv: str | None = None,
    fmt: str = "auto",
    batch_size: int = 32,
    block: int = 4096,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    channels_last: str = "auto",
    compile: str = "none",
) -> dict[str, Any]:
    """Score every clip of ``data_files`` with the teacher(s); write the sidecar ``out``.

    ``channels_last`` and ``compile`` as the trainer's options of the same names.
    """
    from tqdm import tqdm

    from dcls_audio.data import AudioSetHDF5, LogMelFrontend
    from dcls_audio.models.checkpoint import load_model
    from dcls_audio.train.accel import prepare_inference
    from dcls_audio.train.distributed import barrier, distributed_session, pick_device, resolve_env
    from dcls_audio.train.evaluate import ShardedEvalSampler, predict
    from dcls_audio.train.loaders import saved_clip_and_task
    from dcls_audio.workers import loader_options

    if batch_size < 1 or block < 1:
        raise ValueError(f"--batch-size and --block must be >= 1, got {batch_size}, {block}")
    env = resolve_env()
    dev = pick_device(device, env.local_rank, env.world_size)
    out_path, partial = Path(out), Path(f"{out}.partial")
    amp = torch.bfloat16 if dev.type == "cuda" else None
    with distributed_session(env, dev):
        teachers = [load_model(c, device=dev, model=model, conv=conv, fmt=fmt) for c in checkpoints]
        shapes = {(int(t.config["model"]["num_classes"]), *saved_clip_and_task(t.config))
                  for t in teachers}  # fmt: skip
        if len(shapes) != 1:
            raise ValueError(f"the teachers differ in (classes, clip samples, task): {shapes}")
        ((num_classes, clip_samples, task),) = shapes
        activation = "softmax" if task == "multiclass" else "sigmoid"
        files = [os.path.abspath(f) for f in data_files]
        dataset = AudioSetHDF5(files, num_classes, train=False, clip_samples=clip_samples)
        names = dataset.audio_names()
        attrs = {
            "format": FORMAT,
            "num_classes": num_classes,
            "task": task,
            "teachers": json.dumps(
                [
                    {"path": os.path.abspath(c), "sha256": file_sha256(c), "weights": t.weights}
                    for c, t in zip(checkpoints, teachers, strict=True)
                ]  # fmt: skip
            ),
            "source_files": json.dumps(files),
        }
        done = _open_partial(partial, names, num_classes, attrs) if env.is_main else 0
        done = int(_broadcast(done))
        frontend = LogMelFrontend().to(dev).eval()
        nets = [prepare_inference(t.model, dev, channels_last, compile) for t in teachers]
        bar = tqdm(total=len(dataset), initial=done, unit="clip", disable=not (progress and
                   env.is_main))  # fmt: skip
        for start in range(done, len(dataset), block):
            rows = range(start, min(start + block, len(dataset)))
            subset = Subset(dataset, rows)
            loader = DataLoader(
                subset,
                batch_size,
                sampler=ShardedEvalSampler(len(subset), env.rank, env.world_size),
                **loader_options(num_workers),  # die with this process, leave signals to it
            )
            probs = [predict(net, frontend, loader, dev, amp_dtype=amp,
                             activation=activation)[0] for net in nets]  # fmt: skip
            if env.is_main:
                with h5py.File(partial, "r+") as f:
                    f["logits"][rows.start : rows.stop] = ensemble_logits(probs, activation)
                    f.attrs["rows_done"] = rows.stop
            barrier()
            bar.update(len(rows))
        bar.close()
        if env.is_main:
            os.replace(partial, out_path)
    return {"out": str(out_path), "rows": len(dataset), "teachers": json.loads(attrs["teachers"]),
            "task": task, "num_classes": num_classes, "is_main": env.is_main}  # fmt: skip


def _broadcast(value: int) -> int:
    """Rank 0's ``value`` on every rank (itself without a process group)."""
    from dcls_audio.train.distributed import broadcast_object

    return broadcast_object(value)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dcls-audio-teacher", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True,
                   help="a teacher checkpoint; repeat for an ensemble")  # fmt: skip
    p.add_argument("--data-files", nargs="+", required=True, help="PANNs-layout HDF5 files")
    p.add_argument("--out", required=True, help="the sidecar HDF5 to write")
    add_scoring_arguments(p)
    p.add_argument("--block", type=int, default=4096, help="clips per resumable block")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    from dcls_audio.train.preempt import exit_on_signal

    args = _parse(argv)
    try:
        with exit_on_signal("dcls-audio-teacher"):  # a stop keeps the complete blocks written
            out = write_teacher_logits(
                args.checkpoint, args.data_files, args.out, model=args.model, conv=args.conv,
                fmt=args.format, batch_size=args.batch_size, block=args.block, device=args.device,
                num_workers=args.num_workers, progress=not args.no_progress,
                channels_last=args.channels_last, compile=args.compile,
            )  # fmt: skip
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out["is_main"]:
        print(f"{out['rows']} clips x {out['num_classes']} classes ({out['task']}) from "
              f"{len(out['teachers'])} teacher(s) written to {out['out']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

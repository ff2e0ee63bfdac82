"""Data pipeline throughput: read + augment clips/s per worker, log-mel frontend clips/s.

The loader runs in this one process (one worker) over a warm file; it reports clips per
wall-clock second and per CPU second of the process (the latter is the per-core figure on a
machine shared with other jobs). It also times the training loader's epoch start-up (from an
epoch's ``iter()`` to its first batch) with loader workers started every epoch and with
persistent ones (``data.persistent_workers``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dcls_audio.data import AudioSetHDF5, LogMelFrontend
from dcls_audio.datasets.synthetic import NUM_CLASSES, write_split


def bench_loader(path: Path, train: bool, repeats: int) -> tuple[float, float]:
    """(clips per wall-clock second, clips per CPU second of this process) for one worker."""
    ds = AudioSetHDF5(path, num_classes=NUM_CLASSES, train=train, seed=0)
    order = np.random.default_rng(0).permutation(len(ds))
    for i in order:  # warm the page cache and open the file
        ds[int(i)]
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(repeats):
        ds.set_epoch(epoch)
        for i in order:
            ds[int(i)]
    n = repeats * len(ds)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def bench_epoch_start(
    path: Path, workers: int, persistent: bool, epochs: int, batch: int
) -> list[float]:
    """Seconds from each epoch's ``iter(loader)`` to its first batch (the training loader)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from dcls_audio.train.loaders import ResumableSampler
    from dcls_audio.train.preempt import batches, shutdown_workers
    from dcls_audio.workers import loader_options

    ds = AudioSetHDF5(path, num_classes=NUM_CLASSES, train=True, seed=0)
    sampler = ResumableSampler(DistributedSampler(ds, 1, 0, shuffle=True, seed=0))
    loader = DataLoader(ds, batch, sampler=sampler, drop_last=True,
                        **loader_options(workers, persistent=persistent))  # fmt: skip
    times = []
    try:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            with batches(loader) as it:
                next(it)
                times.append(time.perf_counter() - t0)
                for _ in it:  # the rest of the epoch
                    pass
    finally:
        shutdown_workers(loader)
    return times


def bench_frontend(device: str, batch: int, train: bool, repeats: int) -> tuple[float, float]:
    """(clips per wall-clock second, clips per CPU second of this process) for the frontend."""
    fe = LogMelFrontend().to(device).train(train)
    x = torch.randn(batch, 320000, device=device) * 0.1
    with torch.no_grad():
        fe(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            fe(x)
        if device == "cuda":
            torch.cuda.synchronize()
    n = repeats * batch
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main() -> None:
    """CLI: loader and frontend rates, printed and optionally written as JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--file", type=Path, help="existing HDF5 file (default: a generated one)")
    ap.add_argument("--clips", type=int, default=256, help="clips in the generated file")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the file per loader mode")
    ap.add_argument("--batch", type=int, default=32, help="frontend batch size")
    ap.add_argument("--frontend-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for the frontend")
    ap.add_argument("--workers", type=int, default=2, help="loader workers (epoch start-up)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs timed for the start-up")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict = {"cpu_count": os.cpu_count(), "torch_threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            path = Path(tmp) / "bench.h5"
            write_split(path, args.clips, seed=0, split=0)
        res["file"] = str(args.file or f"generated ({args.clips} clips)")
        for mode in ("eval", "train"):
            wall, cpu = bench_loader(path, mode == "train", args.repeats)
            res[f"loader_{mode}_clips_per_s"] = wall
            res[f"loader_{mode}_clips_per_cpu_s"] = cpu
        res["epoch_start_workers"], res["epoch_start_epochs"] = args.workers, args.epochs
        for persistent in (False, True):  # epoch 1 starts the workers in both
            times = bench_epoch_start(path, args.workers, persistent, args.epochs, args.batch)
            key = f"epoch_start_{'persistent' if persistent else 'per_epoch'}_workers"
            res[f"{key}_first_s"] = times[0]
            res[f"{key}_later_mean_s"] = float(np.mean(times[1:]))
    for train in (False, True):
        key = f"frontend_cpu_{'train' if train else 'eval'}"
        wall, cpu = bench_frontend("cpu", args.batch, train, args.frontend_repeats)
        res[f"{key}_clips_per_s"], res[f"{key}_clips_per_cpu_s"] = wall, cpu
    if torch.cuda.is_available():
        res["cuda_device"] = torch.cuda.get_device_name()
        for train in (False, True):
            key = f"frontend_cuda_{'train' if train else 'eval'}_clips_per_s"
            res[key] = bench_frontend("cuda", 256, train, 20)[0]
    for k, v in res.items():
        print(f"{k:44s} {v:.4g}" if isinstance(v, float) else f"{k:44s} {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

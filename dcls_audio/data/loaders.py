"""From the ``data``/``augment`` configs to data files, class names, augmentation and loaders."""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from .frontend import LogMelFrontend
from .hdf5 import AudioSetHDF5
from .labels import load_class_labels
from .mixup import MultiLabelMixup
from .waveform import CLIP_SAMPLES, WaveformAugment


def absolute_path(path: str) -> str:
    """Path relative to the launch directory (Hydra's original cwd when available)."""
    try:
        from hydra.utils import to_absolute_path

        return to_absolute_path(path)
    except ValueError:  # Hydra not initialised (e.g. compose() in tests)
        return os.path.abspath(path)


def resolve_data_files(data_cfg: Any, key: str) -> list[str]:
    """Absolute paths of ``data.<key>`` (globs expanded); a missing file says how to make it."""
    entries = data_cfg[key]
    if entries is None or isinstance(entries, str) or len(entries) == 0:
        raise ValueError(f"data.{key} must be a non-empty list of HDF5 paths, got {entries!r}")
    files: list[str] = []
    for entry in entries:
        path = absolute_path(str(entry))
        matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            target = path.replace("*", "")
            raise FileNotFoundError(
                f"data.{key}: {entry} ({path}) does not exist. For a quick run, create the "
                f"synthetic set with `dcls-audio-synthetic --out {Path(path).parent}` and train "
                "with `data=synthetic`. For AudioSet, pack each split into the PANNs HDF5 layout, "
                "e.g. `dcls-audio-pack audioset --audio-dir <clips> --segments "
                f"<split>_segments.csv --out {target}`, or set data.root / data.{key}=[...] to "
                "existing files."
            )
        files.extend(matches)
    return files


def class_names(data_cfg: Any) -> list[str]:
    """Class display names from data.labels_file (null = packaged AudioSet list)."""
    labels_file = data_cfg.labels_file
    names = load_class_labels(absolute_path(str(labels_file)) if labels_file else None)
    if len(names) != int(data_cfg.num_classes):
        raise ValueError(
            f"data.labels_file={labels_file} lists {len(names)} classes but "
            f"data.num_classes={data_cfg.num_classes}"
        )
    return names


def waveform_augment(aug_cfg: Any, length: int = CLIP_SAMPLES) -> WaveformAugment:
    """Training clips' roll + speed perturbation from ``augment.speed_p``/``speed_range``."""
    speed_p, speed_range = aug_cfg.speed_p, aug_cfg.speed_range
    try:
        low, high = (float(r) for r in speed_range)
        return WaveformAugment(length, speed_p=float(speed_p), speed_range=(low, high))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"augment.speed_p={speed_p!r}, augment.speed_range={speed_range!r}: expected a "
            f"probability in [0, 1] and [low, high] rates with 0 < low <= high ({err})"
        ) from None


def batch_augment(aug_cfg: Any, device: torch.device) -> tuple[LogMelFrontend, MultiLabelMixup]:
    """The per-batch part of the recipe: log-mel frontend with random erasing, and mixup."""
    frontend = LogMelFrontend(erase_p=float(aug_cfg.erase_p)).to(device)
    mixup = MultiLabelMixup(
        alpha=float(aug_cfg.mixup_alpha),
        label_smoothing=float(aug_cfg.label_smoothing),
        enabled=bool(aug_cfg.mixup),
    )
    return frontend, mixup


class ResumableSampler(Sampler[int]):
    """A per-epoch sampler that can start an epoch after its first ``start`` indices.

    The wrapped sampler's order is a function of (seed, epoch), so a run resumed inside an
    epoch draws the same remaining clips as the interrupted one, without reading the skipped
    ones. ``start`` applies to the next epoch set with `set_epoch` only.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and the number of its indices to skip."""
        self.sampler.set_epoch(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


@dataclass
class Loaders:
    """The training loader with its distributed sampler, and the sharded evaluation loader."""

    train: DataLoader
    sampler: ResumableSampler
    eval: DataLoader


def build_loaders(
    data_cfg: Any,
    aug_cfg: Any,
    train_files: list[str],
    eval_files: list[str],
    *,
    batch_size: int,
    eval_batch_size: int | None,
    max_eval_samples: int | None,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> Loaders:
    """Training loader (shuffled per epoch, drop_last) and evaluation loader (each clip once).

    The files come from `resolve_data_files` (called before a run creates anything). Workers
    start with `loader_worker_init`: they die with the process and leave stop signals to it.
    """
    from dcls_audio.train.evaluate import ShardedEvalSampler
    from dcls_audio.train.preempt import loader_worker_init

    from .options import check_targets, dataset_options, training_sampler

    num_classes = int(data_cfg.num_classes)
    train_kw, eval_kw = dataset_options(data_cfg)  # sample rate, clip length, fold split
    augment = waveform_augment(aug_cfg, train_kw["clip_samples"])
    train_ds = AudioSetHDF5(
        train_files, num_classes, train=True, seed=seed, augment=augment, **train_kw
    )
    eval_ds = AudioSetHDF5(eval_files, num_classes, train=False, **eval_kw)
    check_targets(data_cfg.task, training=train_ds, evaluation=eval_ds)
    if max_eval_samples:
        eval_ds = Subset(eval_ds, range(min(int(max_eval_samples), len(eval_ds))))
    sampler = ResumableSampler(training_sampler(data_cfg, train_ds, world_size, rank, seed))
    workers = int(data_cfg.num_workers)
    pin = bool(data_cfg.pin_memory) and device.type == "cuda"
    # its own generator: starting an epoch's iterator must not draw from the global RNG, which
    # a run resumed inside an epoch restores to the draws of the interrupted step (drop path)
    train = DataLoader(
        train_ds, batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
        drop_last=True, generator=torch.Generator().manual_seed(seed),
        worker_init_fn=loader_worker_init,
    )  # fmt: skip
    eval_loader = DataLoader(
        eval_ds,
        int(eval_batch_size or batch_size),
        sampler=ShardedEvalSampler(len(eval_ds), rank, world_size),
        num_workers=workers,
        pin_memory=pin,
        worker_init_fn=loader_worker_init,
    )
    return Loaders(train=train, sampler=sampler, eval=eval_loader)

"""From the config to the training objects: data files, class list, datasets, samplers, loaders.

The ``data`` keys (clip length, class list of packed files, folds, task checks, balanced
sampling) and the ``augment`` keys are read here and turned into what `dcls_audio.train.runner`
trains with; the pieces themselves (datasets, samplers, frontend, mixup) live in
`dcls_audio.data`. Every key is read from the config (configs/data/*.yaml and
configs/augment/*.yaml hold every one of them).
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from dcls_audio.data import AudioSetHDF5, LogMelFrontend, MultiLabelMixup, load_class_labels
from dcls_audio.data.labels import read_packed_classes
from dcls_audio.data.sampling import BalancedDistributedSampler, EpochIndex, ShardedEvalSampler
from dcls_audio.data.waveform import CLIP_SAMPLES, SAMPLE_RATE, WaveformAugment
from dcls_audio.train.tasks import check_task
from dcls_audio.workers import loader_options


def absolute_path(path: str) -> str:
    """Path relative to the launch directory (Hydra's original cwd when available)."""
    try:
        from hydra.utils import to_absolute_path

        return to_absolute_path(path)
    except ValueError:  # Hydra not initialised (e.g. compose() in tests)
        return os.path.abspath(path)


# how to make missing files when the data config has no ``make_hint`` (a config of one's own)
DEFAULT_MAKE_HINT = (
    "For a quick run, create the synthetic set with `dcls-audio-synthetic --out {dir}` and train "
    "with `data=synthetic`. For AudioSet, pack each split into the PANNs HDF5 layout, e.g. "
    "`dcls-audio-pack audioset --audio-dir <clips> --segments <split>_segments.csv --out {file}`"
)


def resolve_data_files(data_cfg: Any, key: str) -> list[str]:
    """Absolute paths of ``data.<key>`` (globs expanded); a missing file says how to make it.

    The way to make it is the data config's own ``make_hint`` (``{dir}`` and ``{file}`` stand
    for the missing file's folder and path), or :data:`DEFAULT_MAKE_HINT`.
    """
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
            hint = str(data_cfg.get("make_hint") or DEFAULT_MAKE_HINT).rstrip(". ")
            hint = hint.replace("{dir}", str(Path(path).parent)).replace("{file}", target)
            raise FileNotFoundError(
                f"data.{key}: {entry} ({path}) does not exist. {hint}. Or set data.root or "
                f"data.{key}=[...] to existing files."
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


class ResumableSampler(Sampler[EpochIndex]):
    """A per-epoch sampler that can start an epoch after its first ``start`` indices.

    The wrapped sampler's order is a function of (seed, epoch), so a run resumed inside an
    epoch draws the same remaining clips as the interrupted one, without reading the skipped
    ones. ``start`` applies to the next epoch set with `set_epoch` only. Each index comes with
    its epoch (`EpochIndex`), for the dataset's augmentation draws in persistent workers.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.start = 0
        self.epoch = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and the number of its indices to skip."""
        self.sampler.set_epoch(epoch)
        self.epoch = int(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[EpochIndex]:
        epoch, order = self.epoch, iter(self.sampler)
        return (EpochIndex(epoch, i) for i in itertools.islice(order, self.start, None))

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


class WithIndex(Dataset):
    """A dataset whose items end with their index; every other attribute is the dataset's."""

    def __init__(self, dataset: AudioSetHDF5) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | EpochIndex) -> tuple[Any, ...]:
        return (*self.dataset[index], index.index if isinstance(index, EpochIndex) else index)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


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
    with_index: bool = False,
) -> Loaders:
    """Training loader (shuffled per epoch, drop_last) and evaluation loader (each clip once).

    The files come from `resolve_data_files` (called before a run creates anything).
    ``with_index``: training items are (waveform, target, index), for stored teacher logits.
    Workers are born with the stop signals blocked and leave them to this process
    (`loader_options`); the training loader's live for the run (``data.persistent_workers``).
    """
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
        WithIndex(train_ds) if with_index else train_ds, batch_size, sampler=sampler,
        pin_memory=pin, drop_last=True, generator=torch.Generator().manual_seed(seed),
        **loader_options(workers, persistent=bool(data_cfg.persistent_workers)),
    )  # fmt: skip
    eval_loader = DataLoader(  # evaluations are rarer than epochs: its workers start each time
        eval_ds,
        int(eval_batch_size or batch_size),
        sampler=ShardedEvalSampler(len(eval_ds), rank, world_size),
        pin_memory=pin,
        **loader_options(workers),
    )
    return Loaders(train=train, sampler=sampler, eval=eval_loader)


def tuning_loader(
    data_cfg: Any, train_files: list[str], max_clips: int, batch_size: int, rank: int,
    world_size: int, device: torch.device,
) -> DataLoader | None:  # fmt: skip
    """Up to ``max_clips`` strongly labelled training clips, evenly spread over the set, without
    augmentation and sharded like the evaluation: where the segment-F1 threshold is chosen.
    None when the training files have no strongly labelled clip (or ``max_clips`` is 0)."""
    if max_clips <= 0:
        return None
    train_kw, _ = dataset_options(data_cfg)
    dataset = AudioSetHDF5(train_files, int(data_cfg.num_classes), train=False, **train_kw)
    rows = dataset.strong_rows() if dataset.has_strong else np.zeros(0, dtype=np.int64)
    if len(rows) == 0:
        return None
    picked = np.unique(np.linspace(0, len(rows) - 1, min(max_clips, len(rows))).round())
    subset = Subset(dataset, rows[picked.astype(np.int64)].tolist())
    return DataLoader(
        subset, batch_size, sampler=ShardedEvalSampler(len(subset), rank, world_size),
        pin_memory=bool(data_cfg.pin_memory) and device.type == "cuda",
        **loader_options(int(data_cfg.num_workers)),
    )  # fmt: skip


def clip_samples(data_cfg: Any) -> int:
    """Samples per clip at 32 kHz from ``data.clip_seconds``."""
    seconds = data_cfg.clip_seconds
    try:
        n = round(float(seconds) * SAMPLE_RATE)
    except (TypeError, ValueError):
        n = 0
    if n < 1024:  # shorter than one STFT window
        raise ValueError(f"data.clip_seconds={seconds!r}: expected a length >= 0.032 s")
    return n


def resolve_classes(cfg: DictConfig, files: list[list[str]]) -> list[str]:
    """Class names of the run; fills ``data.num_classes`` when null. Checks every source agrees.

    The packed files' class list (``dcls-audio-pack custom`` stores it) is used unless
    ``data.labels_file`` names one; files without a stored list (AudioSet packs) take
    ``data.labels_file`` (null = the packaged AudioSet list). An explicit ``data.num_classes``
    must equal the list's length.
    """
    data = cfg.data
    stored: dict[str, list[str] | None] = {}
    for path in dict.fromkeys(p for group in files for p in group):
        found = read_packed_classes(path)
        stored[path] = None if found is None else found.names
    lists = {p: n for p, n in stored.items() if n is not None}
    if lists and len(lists) != len(stored):
        bare = [p for p, n in stored.items() if n is None]
        raise ValueError(
            f"{bare[0]} stores no class list but {next(iter(lists))} does; train and evaluate on "
            "files packed with the same class list (dcls-audio-pack custom --classes ...)"
        )
    first = next(iter(lists), None)
    for path, names in lists.items():
        if names != lists[first]:
            raise ValueError(
                f"{path} stores {len(names)} classes that differ from the {len(lists[first])} of "
                f"{first}; pack both with the same --classes FILE.csv"
            )
    if data.labels_file or first is None:
        names = load_class_labels(
            absolute_path(str(data.labels_file)) if data.labels_file else None
        )
        if first is not None and len(names) != len(lists[first]):
            raise ValueError(
                f"data.labels_file={data.labels_file} lists {len(names)} classes but {first} "
                f"stores {len(lists[first])}"
            )
    else:
        names = lists[first]
    if data.num_classes is None:
        with open_dict(data):
            data.num_classes = len(names)
    elif int(data.num_classes) != len(names):
        if data.labels_file:
            where = f"data.labels_file={data.labels_file}"
        else:
            where = first if first is not None else "the packaged AudioSet class list"
        raise ValueError(
            f"{where} lists {len(names)} classes but data.num_classes={data.num_classes} "
            "(null: take the count from the class list)"
        )
    return list(names)


def dataset_options(data_cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of the training and evaluation datasets: clip length and fold split."""
    common = {"sample_rate": data_cfg.sample_rate, "clip_samples": clip_samples(data_cfg)}
    fold = data_cfg.fold
    if fold is None:
        return dict(common), dict(common)
    if isinstance(fold, bool) or not isinstance(fold, int):
        raise ValueError(f"data.fold={fold!r}: expected null or an integer fold number")
    return (
        {**common, "fold": fold, "fold_mode": "exclude"},
        {**common, "fold": fold, "fold_mode": "only"},
    )


def check_targets(task: str, **datasets: AudioSetHDF5) -> None:
    """``data.task=multiclass`` needs exactly one label per clip (error names the files)."""
    if check_task(task) != "multiclass":
        return
    for which, ds in datasets.items():
        per_row = ds.targets().sum(axis=1)
        bad = int(np.sum(per_row != 1))
        if bad:
            raise ValueError(
                f"data.task=multiclass but {bad} of the {len(per_row)} {which} clips "
                f"({', '.join(map(str, ds.files))}) do not have exactly one label; use "
                "data.task=multilabel for multi-label data"
            )


def training_sampler(
    data_cfg: Any, train_ds: AudioSetHDF5, world_size: int, rank: int, seed: int
) -> Sampler:
    """The shuffling DistributedSampler, or the class-balanced one (``data.balanced_sampling``)."""
    if bool(data_cfg.balanced_sampling):
        return BalancedDistributedSampler(train_ds.targets(), world_size, rank, seed=seed)
    return DistributedSampler(train_ds, world_size, rank, shuffle=True, seed=seed, drop_last=True)


def saved_clip_and_task(config: dict[str, Any]) -> tuple[int, str]:
    """Clip length (samples) and ``data.task`` of a checkpoint's saved config.

    Checkpoints of older runs and foreign files have no such keys: they are 10 s multilabel
    AudioSet models.
    """
    data = config.get("data") or {}
    seconds = data.get("clip_seconds", 10.0)
    return round(float(seconds) * SAMPLE_RATE), str(data.get("task", "multilabel"))

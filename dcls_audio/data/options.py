"""The ``data`` keys for own audio: clip length, class list of packed files, folds, task checks,
balanced sampling. `dcls_audio.data.loaders` and the trainer call these; each reads its keys
from the config (configs/data/*.yaml hold every one of them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig, open_dict
from torch.utils.data import DistributedSampler, Sampler

from .hdf5 import AudioSetHDF5
from .labels import load_class_labels
from .pack_custom import read_packed_classes
from .sampling import BalancedDistributedSampler
from .waveform import SAMPLE_RATE


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
        from .loaders import absolute_path

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
    from dcls_audio.train.tasks import check_task

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

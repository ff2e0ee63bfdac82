"""What the dataset makers share: reading a clip to 32 kHz int16, appending a row to a packing
file (flushed and marked every `FLUSH_EVERY` rows, for resuming), the files of a generated set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from dcls_audio.data.waveform import CLIP_SAMPLES, SAMPLE_RATE, float_to_int16, pad_or_truncate

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
FLUSH_EVERY = 64


def load_clip(path: str | os.PathLike, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Read any soundfile-readable file -> int16 mono 32 kHz, padded/truncated to ``length``."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if x.shape[0] == 0:
        raise ValueError("no samples")
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        x = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
    return float_to_int16(pad_or_truncate(x, length))


def load_task(task: tuple) -> tuple[int, np.ndarray | None, str | None]:
    """(index, path[, length]) -> (index, clip or None, error or None)."""
    i, path, *length = task
    try:
        return i, load_clip(path, *length), None
    except Exception as e:  # any decoder failure makes the clip "unreadable", never a silent row
        return i, None, f"{type(e).__name__}: {e}"


def append_row(
    f: h5py.File, name: str, clip: np.ndarray, labels: Iterable[int], fold: int | None = None
) -> None:
    """Append one clip (name, int16 waveform, multi-hot target, fold) to a packing file.

    Every `FLUSH_EVERY` rows the file is flushed and ``rows_done`` marks the rows a resumed
    packing keeps.
    """
    columns = ("audio_name", "waveform", "target") + (("fold",) if fold is not None else ())
    row = f["audio_name"].shape[0]
    for key in columns:
        f[key].resize(row + 1, axis=0)
    target = np.zeros(f["target"].shape[1], dtype=bool)
    target[list(labels)] = True
    f["audio_name"][row], f["waveform"][row], f["target"][row] = name.encode(), clip, target
    if fold is not None:
        f["fold"][row] = fold
    if (row + 1) % FLUSH_EVERY == 0:
        f.attrs["rows_done"] = row + 1
        f.flush()


def set_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    """The files of a generated set in ``out_dir`` (created): train.h5, eval.h5, class index."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "train": out / "train.h5",
        "eval": out / "eval.h5",
        "labels": out / "class_labels_indices.csv",
    }

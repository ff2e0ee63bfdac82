"""Stored teacher predictions: a sidecar HDF5 of logits keyed by ``audio_name``.

Layout (written by ``dcls-audio-teacher``, read here)::

    audio_name  (N,)   S20      the packed clips' names, in the order of the input files
    logits      (N, C) float16  the teacher's logits per clip, unaugmented (docs/distillation.md)
    attrs: format, num_classes, task, rows_done, teachers (JSON: path, sha256, weights),
           source_files (JSON)

Packed datasets are often read-only, so the logits live beside them rather than inside. An
ensemble's logits are those of the mean probability (sigmoid: the logit of the mean; softmax:
its log), so the student sees the ensemble's probabilities at temperature 1.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT = "dcls-audio-teacher-logits-1"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content (identifies a teacher whatever its path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar's description: format, num_classes, task, rows_done, teachers, files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher logits {path}: no such file")
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(
                f"teacher logits {path}: attribute format={f.attrs.get('format')!r}; expected "
                f"{FORMAT!r} (a file written by dcls-audio-teacher)"
            )
        for key in ("audio_name", "logits"):
            if key not in f:
                raise ValueError(f"teacher logits {path}: no dataset '{key}'")
        return {
            "format": FORMAT,
            "num_classes": int(f.attrs["num_classes"]),
            "task": str(f.attrs["task"]),
            "rows": int(f["logits"].shape[0]),
            "rows_done": int(f.attrs["rows_done"]),
            "teachers": json.loads(f.attrs["teachers"]),
            "source_files": json.loads(f.attrs["source_files"]),
        }


class TeacherLogits:
    """Teacher logits of a training set's clips, looked up by dataset index (float32 rows)."""

    def __init__(self, path: str | os.PathLike, audio_names: np.ndarray, num_classes: int):
        self.path = Path(path)
        info = read_attrs(self.path)
        if info["rows_done"] != info["rows"]:
            raise ValueError(
                f"teacher logits {self.path}: only {info['rows_done']} of {info['rows']} rows "
                "written; finish it by running the same dcls-audio-teacher command again"
            )
        if info["num_classes"] != num_classes:
            raise ValueError(
                f"teacher logits {self.path}: {info['num_classes']} classes, the model has "
                f"{num_classes}"
            )
        self.info = info
        with h5py.File(self.path, "r") as f:
            names = f["audio_name"][()]
            logits = f["logits"][()]
        where = {bytes(n): i for i, n in enumerate(names)}
        missing = [bytes(n).decode() for n in audio_names if bytes(n) not in where]
        if missing:
            raise KeyError(
                f"teacher logits {self.path}: no logits for {len(missing)} of {len(audio_names)} "
                f"clips (first: {missing[:3]}); run dcls-audio-teacher on these data files"
            )
        rows = np.fromiter((where[bytes(n)] for n in audio_names), np.int64, len(audio_names))
        self.logits = logits[rows]  # (len(dataset), C) float16, in dataset order

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, index: np.ndarray | list[int]) -> np.ndarray:
        """float32 logits of dataset rows ``index``."""
        return self.logits[np.asarray(index, dtype=np.int64)].astype(np.float32)

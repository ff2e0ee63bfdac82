"""Class index files (AudioSet's ``class_labels_indices.csv`` layout: index, mid, display_name)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import h5py

AUDIOSET_LABELS_NAME = "class_labels_indices.csv"


@dataclass(frozen=True)
class ClassIndex:
    """The rows of a class index file: machine ids and display names in index order."""

    mids: list[str]
    names: list[str]

    def mid_to_index(self) -> dict[str, int]:
        """Map every mid to its column in the target matrix."""
        return {mid: i for i, mid in enumerate(self.mids)}


def packaged_labels_path() -> Path:
    """Path of the packaged AudioSet 527-class index file."""
    return Path(str(resources.files("dcls_audio.data").joinpath(AUDIOSET_LABELS_NAME)))


def read_class_index(path: str | Path | None = None) -> ClassIndex:
    """Read and validate a class index csv (None = the packaged AudioSet file)."""
    path = packaged_labels_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class index file {path} does not exist")
    mids: list[str] = []
    names: list[str] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["index", "mid", "display_name"]:
            raise ValueError(f"{path}: expected header 'index,mid,display_name', found {header!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{line_no}: expected 3 columns, found {row!r}")
            try:
                index = int(row[0])
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: index {row[0]!r} is not an integer") from e
            if index != len(mids):
                raise ValueError(f"{path}:{line_no}: expected index {len(mids)}, found {index}")
            mids.append(row[1].strip())
            names.append(row[2])
    if not mids:
        raise ValueError(f"{path}: no class rows")
    if len(set(mids)) != len(mids):
        raise ValueError(f"{path}: duplicate mids")
    return ClassIndex(mids=mids, names=names)


def load_class_labels(path: str | Path | None = None) -> list[str]:
    """Display names in index order (None = packaged AudioSet 527-row csv)."""
    return read_class_index(path).names


def write_class_index(path: str | Path, mids: list[str], names: list[str]) -> None:
    """Write a class index csv in AudioSet's format (temp name, then rename)."""
    from dcls_audio.runfiles import write_text

    rows = [f'{i},{mid},"{name}"\n' for i, (mid, name) in enumerate(zip(mids, names, strict=True))]
    write_text(path, "index,mid,display_name\n" + "".join(rows))


def read_packed_classes(path: str | os.PathLike) -> ClassIndex | None:
    """The class list stored in a packed file, or None when it stores none (AudioSet packs)."""
    with h5py.File(path, "r") as f:
        if "class_names" not in f:
            return None
        names = [str(s) for s in f["class_names"].asstr()[()]]
        mids = [str(s) for s in f["class_mids"].asstr()[()]] if "class_mids" in f else names
    return ClassIndex(mids=mids, names=names)

"""Run-time plumbing of a training run: data paths, run directory, class names, git, JSON."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from dcls_audio.train.log import jsonable


def resolve_data_files(data_cfg: Any, key: str) -> list[str]:
    """Absolute paths of ``data.<key>`` (globs expanded); a missing file says how to make it."""
    entries = data_cfg.get(key)
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
                f"synthetic set with `python scripts/make_synthetic.py --out {Path(path).parent}`"
                " and train with `data=synthetic`. For AudioSet, pack each split into the PANNs "
                "HDF5 layout, e.g. `python scripts/pack_audioset.py --audio-dir <clips> "
                f"--segments <split>_segments.csv --out {target}`, or set data.root / "
                f"data.{key}=[...] to existing files."
            )
        files.extend(matches)
    return files


def absolute_path(path: str) -> str:
    """Path relative to the launch directory (Hydra's original cwd when available)."""
    try:
        from hydra.utils import to_absolute_path

        return to_absolute_path(path)
    except ValueError:  # Hydra not initialised (e.g. compose() in tests)
        return os.path.abspath(path)


def hydra_run_dir() -> str | None:
    """Hydra's output directory, or None outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except ValueError:
        return None


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(jsonable(obj), f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; others read results
    os.replace(tmp, path)


def class_names(data_cfg: Any) -> list[str]:
    """Class display names from data.labels_file (None = packaged AudioSet list)."""
    from dcls_audio.data import load_class_labels

    labels_file = data_cfg.get("labels_file")
    names = load_class_labels(absolute_path(str(labels_file)) if labels_file else None)
    if len(names) != int(data_cfg.num_classes):
        raise ValueError(
            f"data.labels_file={labels_file} lists {len(names)} classes but "
            f"data.num_classes={data_cfg.num_classes}"
        )
    return names

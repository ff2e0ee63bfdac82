"""Run files: the results.json schema, atomic writes, strict JSON, the git commit.

Every file a run or a command writes goes through `atomic_write` (a temporary file beside the
target, flushed and synced, then renamed over it), so a crash never leaves a half-written file.
`results.json` is built by `build_results` and read by `read_results`; aggregation, plots and
the results table (`dcls_audio.results`, the command) read it only through this module.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
# results.json entries that describe the run; every other entry is a metric of the evaluation.
INFO_KEYS = (
    "params",
    "seed",
    "config",
    "commit",
    "wall_time_s",
    "train_samples_per_s",
    "epochs_trained",
    "steps",
    "world_size",
    "init",
    "device",
    "class_names",
    "task",
    "distill",
)
# metrics every results.json holds (compute_metrics' keys plus the clip count); multiclass runs
# (task "multiclass") add dcls_audio.train.tasks.MULTICLASS_KEYS: accuracy, macro_f1,
# per_class_recall, confusion_matrix; runs with strongly labelled evaluation clips add
# dcls_audio.train.event_metrics.event_metrics' keys: event_clips, segment_threshold, segment_s
# and, when event_clips > 0, EVENT_METRIC_KEYS (segment_f1, segment_ap, ...); with strongly
# labelled training clips also segment_f1_tuned, segment_threshold_tuned, segment_f1_train and
# tune_clips (dcls_audio.train.frames.tuned_threshold)
METRIC_KEYS = (
    "map",
    "mauc",
    "dprime",
    "per_class_ap",
    "num_classes_scored",
    "num_classes_auc",
    "num_eval_clips",
)


def jsonable(value: Any) -> Any:
    """Strict-JSON form of a value: NaN/inf become null, numpy/torch scalars plain numbers."""
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return jsonable(value.item())
    return value


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; others read results
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write strict JSON (NaN as null), indented, atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the source tree of this package, or None outside a checkout."""
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


def build_results(
    metrics: Mapping[str, Any],
    *,
    params: int,
    seed: int,
    config: Mapping[str, Any],
    wall_time_s: float,
    train_samples_per_s: float,
    epochs_trained: int,
    steps: int,
    world_size: int,
    class_names: list[str],
    init: Mapping[str, Any] | None = None,
    device: Mapping[str, Any],
    task: str = "multilabel",
    distill: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The results.json document of a finished run: its metrics, then what describes the run."""
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"results: metrics lack {missing}")
    clash = [k for k in INFO_KEYS if k in metrics]
    if clash:
        raise ValueError(f"results: metric names {clash} are reserved for run information")
    return {
        **metrics,
        "params": int(params),
        "seed": int(seed),
        "config": dict(config),
        "commit": git_commit(),
        "wall_time_s": float(wall_time_s),
        "train_samples_per_s": float(train_samples_per_s),
        "epochs_trained": int(epochs_trained),
        "steps": int(steps),
        "world_size": int(world_size),
        "device": dict(device),
        "class_names": list(class_names),
        "init": dict(init) if init is not None else {"mode": "none", "pretrained": None},
        "task": str(task),
        "distill": dict(distill) if distill is not None else {"mode": "none"},
    }


def results_path(path: str | os.PathLike) -> Path:
    """A results.json path, given the file or its run directory."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results.json (or a run directory's); errors name the file and what is wrong."""
    path = results_path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such file (a run writes it in its run directory when training ends)"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read results file ({err})") from err
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise ValueError(f"{path}: not a results file (expected a JSON object with a 'config')")
    missing = [k for k in ("map",) if k not in results]
    if missing:
        raise ValueError(f"{path}: results file lacks {missing}")
    return results


def metrics_of(results: Mapping[str, Any]) -> dict[str, Any]:
    """The metric entries of a results document (run information left out)."""
    return {k: v for k, v in results.items() if k not in INFO_KEYS}


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL log (metrics.jsonl); a malformed line is an error naming file and line."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not valid JSON ({err})") from err
    return records


def metric_value(value: Any) -> float:
    """A metric as float; null (NaN written as strict JSON) becomes NaN."""
    return math.nan if value is None else float(value)

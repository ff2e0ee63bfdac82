"""Training checkpoints: ``last.pt`` every epoch, ``best.pt`` by mAP, and resuming from them.

Files hold only tensors and plain Python containers, so they load with ``weights_only=True``.
The resume reader is strict: a damaged file, a file of another trainer or a run with an
incompatible configuration stops the run with a named error instead of starting over.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcls_audio.runfiles import RESULTS_FILE, atomic_write

LAST = "last.pt"
BEST = "best.pt"
REQUIRED_KEYS = (
    "model",
    "ema",
    "optimizer",
    "scheduler",
    "epoch",
    "step",
    "steps_per_epoch",
    "config",
)
BEST_KEYS = ("model", "ema", "config", "class_names", "epoch", "step", "best_score")
# Keys whose change makes an existing last.pt unusable for the run being started: the model,
# its optimiser and everything the per-iteration schedule is built from (a resumed run must
# continue the saved schedule, not silently keep its old horizon or warm-up).
RESUME_KEYS = (
    "model",
    "conv",
    "optim",
    "data.num_classes",
    "trainer.global_batch_size",
    "trainer.epochs",
    "trainer.warmup_epochs",
)


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used to resume."""


@dataclass
class RunState:
    """Progress of a run, saved in every checkpoint and restored on resume."""

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0  # optimizer steps of `epoch` already done (a run stopped mid-epoch)
    best_score: float = float("-inf")  # best.pt's selection metric (the task's `selection`)
    train_time_s: float = 0.0
    train_samples: int = 0
    wall_time_s: float = 0.0
    last_eval: dict[str, Any] | None = field(default=None)
    eval_pending: bool = False  # a stop signal ended the evaluation of these weights


def prepare_run_dir(run_dir: Path) -> list[str]:
    """Create the run directory and prove it writable, or raise a named `CheckpointError`.

    Returns the names of the temporary files that a killed save left there, now removed.
    """
    probe = run_dir / ".write_check"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(probe, lambda f: f.write(b"ok"))
        probe.unlink()
        return remove_partial_saves(run_dir)
    except OSError as err:
        raise CheckpointError(
            f"run directory {run_dir} cannot be created or written ({err.strerror or err}); "
            "choose another with hydra.run.dir=... or fix its permissions"
        ) from err


def remove_partial_saves(run_dir: Path) -> list[str]:
    """Delete the temporary files of saves that never finished (a process killed while saving).

    `atomic_write` writes ``.<name>.<random>.tmp`` beside ``<name>`` and renames it over it; a
    kill in between leaves the temporary file, never a torn ``<name>``.
    """
    removed = []
    for name in (LAST, BEST, RESULTS_FILE, ".write_check"):
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return sorted(removed)


def check_space(run_dir: Path, model: nn.Module, ema: bool) -> None:
    """Fail before training when the run directory's disk cannot hold the checkpoints.

    A checkpoint holds the weights, their EMA copy and two Adam moments; ``last.pt`` is written
    beside its previous version and ``best.pt`` may be written too, so three must fit.
    """
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    need = 3 * weights * (3 + int(ema))
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise CheckpointError(
            f"run directory {run_dir} has {free / 2**20:.0f} MiB free but its checkpoints need "
            f"about {need / 2**20:.0f} MiB; free some space or choose another hydra.run.dir"
        )


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it.

    A failed write (disk full, file size limit, I/O error) leaves ``path`` as it was and raises
    `CheckpointError` naming it.
    """
    path = Path(path)
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        kept = f"{path} is unchanged" if path.exists() else f"{path} was not written"
        raise CheckpointError(
            f"cannot write checkpoint {path} ({type(err).__name__}: {reason}; {free} in "
            f"{path.parent}); {kept}. Free some space (or raise the file size limit) and run "
            "again in the same directory to resume."
        ) from err


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint; a damaged or incomplete file raises `CheckpointError`."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/garbled files
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {reason}). Refusing to start "
            f"over silently: restore it, or delete/move {path} to train from scratch."
        ) from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(
            f"checkpoint {path} lacks {missing}; it was not written by this trainer. "
            f"Delete/move {path} to train from scratch."
        )
    return ckpt


def _select(cfg: dict, dotted: str) -> Any:
    """``cfg['a']['b']`` for ``'a.b'`` (None when absent)."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def read_resume(path: Path, config: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The last.pt to resume from (None when absent) and the compatible config keys it changes.

    Raises `CheckpointError` for a damaged file or one written with an incompatible config.
    """
    if not path.exists():
        return None, []
    saved = load_checkpoint(path)
    bad = [k for k in RESUME_KEYS if _select(saved["config"], k) != _select(config, k)]
    if bad:
        raise CheckpointError(
            f"{path} was written with a different {', '.join(bad)} than this run; resume with "
            "the same configuration or choose a new run directory (hydra.run.dir=...)"
        )
    changed = [k for k in ("seed", "data", "trainer") if saved["config"].get(k) != config.get(k)]
    return saved, changed


def restore(
    saved: dict[str, Any],
    path: Path,
    *,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    steps_per_epoch: int,
    total_steps: int,
    rank: int,
    world_size: int,
) -> tuple[RunState, list[Any] | None]:
    """Load a last.pt into the run's objects and RNGs.

    Returns the saved `RunState` and, for a run stopped inside an epoch, this rank's
    (mixup, erasing) generator states to continue that epoch with.
    """
    if saved["steps_per_epoch"] != steps_per_epoch:
        raise CheckpointError(
            f"{path} has {saved['steps_per_epoch']} optimizer steps per epoch but this "
            f"run has {steps_per_epoch} (different data or batch size); use a new run dir"
        )
    state = RunState(**{k: saved[k] for k in asdict(RunState()) if k in saved})
    at = state.epoch * steps_per_epoch + state.epoch_step
    if state.step != at and state.step < total_steps:
        raise CheckpointError(
            f"{path} stopped inside epoch {state.epoch} at trainer.max_steps={state.step}; it "
            "cannot be extended. Start a new run directory."
        )
    rngs = saved.get("rng") or []
    if state.epoch_step and len(rngs) != world_size:
        raise CheckpointError(
            f"{path} was saved inside an epoch by {len(rngs)} processes; resume it with the "
            f"same number of processes (this run has {world_size})"
        )
    model.load_state_dict(saved["model"])
    if ema is not None:
        ema.load_state_dict(saved["ema"] if saved["ema"] is not None else saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if len(rngs) == world_size:
        restore_rng_state(rngs[rank])
    return state, (rngs[rank].get("epoch") if state.epoch_step else None)


def snapshot(
    *,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: RunState,
    rngs: list[dict[str, Any]],
    steps_per_epoch: int,
    config: dict[str, Any],
    class_names: list[str],
) -> dict[str, Any]:
    """The contents of last.pt: weights, optimizer, schedule, every rank's RNGs, progress."""
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rngs,
        "steps_per_epoch": steps_per_epoch,
        "config": config,
        "class_names": class_names,
        **asdict(state),
    }


def save(run_dir: Path, snap: dict[str, Any], best_metrics: dict[str, Any] | None) -> None:
    """Write last.pt, and best.pt (weights, config and ``best_metrics``) when given."""
    if best_metrics is not None:
        best = {k: snap[k] for k in BEST_KEYS}
        atomic_torch_save({**best, "metrics": best_metrics}, run_dir / BEST)
    atomic_torch_save(snap, run_dir / LAST)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) generator states as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)

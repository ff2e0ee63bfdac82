"""Evaluation: every clip scored exactly once, at any world size.

`DistributedSampler` pads the evaluation set so that all ranks see as many clips, which counts
some clips twice in the metrics (the authors' code has this bug). `ShardedEvalSampler` splits
the clip indices into contiguous, disjoint blocks instead (ranks may differ by one clip), and
`predict` gathers (index, score, target) chunks from every rank and puts them back in dataset
order. No collective runs inside the batch loop, so ranks with different numbers of batches
cannot dead-lock; the collectives come after it (the final `all_gather_object`, and with
``stop`` one all-reduce that lets every rank leave together when a stop signal ends it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dcls_audio.data.sampling import ShardedEvalSampler
from dcls_audio.train.preempt import batches
from dcls_audio.workers import worker_died

__all__ = ["EvaluationStopped", "ShardedEvalSampler", "predict"]


class EvaluationStopped(RuntimeError):
    """A stop signal ended an evaluation early (raised on every rank)."""


def _dist_world() -> tuple[bool, int]:
    """(initialised, world size) of the default process group."""
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_world_size()
    return False, 1


def _sampler_indices(loader: DataLoader) -> list[int]:
    """Dataset indices in the order the loader yields them (needs a deterministic sampler)."""
    if getattr(loader.batch_sampler, "sampler", None) is not loader.sampler:
        raise ValueError(
            "predict: the loader's batch_sampler does not draw from loader.sampler; make the "
            "dataset return (waveform, target, index) instead"
        )
    if getattr(loader, "drop_last", False):
        raise ValueError("predict: the evaluation loader must not use drop_last=True (clips lost)")
    first = [int(i) for i in loader.sampler]
    second = [int(i) for i in loader.sampler]
    if first != second:
        raise ValueError(
            "predict: loader.sampler is not deterministic (e.g. shuffle=True); use "
            "ShardedEvalSampler or a SequentialSampler, or make the dataset return "
            "(waveform, target, index)"
        )
    return first


def _modes(modules: list[nn.Module | None]) -> list[tuple[nn.Module, bool]]:
    """Training flag of every submodule, to restore after evaluation."""
    return [(m, m.training) for root in modules if root is not None for m in root.modules()]


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective under a process group)."""
    initialised, world = _dist_world()
    if not initialised or world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _gather(
    indices: np.ndarray, scores: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate the (indices, scores, targets) chunks of every rank, on every rank."""
    initialised, world = _dist_world()
    if not initialised or world == 1:
        return indices, scores, targets
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * world
    dist.all_gather_object(chunks, (indices, scores, targets))
    # ranks with no clip contribute (0, 0) arrays that would not concatenate
    parts = [c for c in chunks if c is not None and len(c[0])]
    if not parts:
        return indices, scores, targets
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def _to_dataset_order(
    indices: np.ndarray, scores: np.ndarray, targets: np.ndarray, num_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Place rows by dataset index; drop padded repeats; fail if any clip is missing."""
    uniq, first = np.unique(indices, return_index=True)
    if len(uniq) != num_samples or (num_samples and (uniq[0] != 0 or uniq[-1] != num_samples - 1)):
        missing = num_samples - int(np.sum((uniq >= 0) & (uniq < num_samples)))
        raise RuntimeError(
            f"predict: scored {len(uniq)} distinct clips but the dataset has {num_samples} "
            f"({missing} missing); every rank's sampler must together cover the whole dataset "
            "(use ShardedEvalSampler(len(dataset), rank, world_size))"
        )
    return scores[first], targets[first]


def predict(
    model: nn.Module,
    frontend: nn.Module | None,
    loader: DataLoader,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    activation: str = "sigmoid",
    stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid (or softmax) scores and targets, float32 (N, C) in dataset order, each clip once.

    The loader's dataset yields (waveform, target) or (waveform, target, index). Without the
    index, dataset indices are read from `loader.sampler`, which must then be deterministic
    (ShardedEvalSampler, SequentialSampler or an unshuffled DistributedSampler, whose padded
    repeats are dropped). Under an initialised process group the chunks of all ranks are
    gathered so that every rank returns the full arrays (with NCCL, each rank's CUDA device
    must be current, as `all_gather_object` stages through it). A DDP wrapper is unwrapped (its
    forward would broadcast buffers, a collective that ranks with uneven batches would not all
    reach). The frontend runs in float32; only the model runs under autocast(amp_dtype).
    `model` and `frontend` are put in eval mode and their modes restored afterwards. ``stop()``
    (this process only, e.g. `StopSignal.pending`) is checked before each batch; when it is
    true on any rank, every rank raises `EvaluationStopped`. The loader's workers are shut
    down when the loop ends, however it ends.
    """
    if activation not in ("sigmoid", "softmax"):
        raise ValueError(f"predict: activation {activation!r}; expected 'sigmoid' or 'softmax'")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    device = torch.device(device)
    sampler_indices: list[int] | None = None
    modes = _modes([model, frontend])
    idx_chunks: list[np.ndarray] = []
    score_chunks: list[np.ndarray] = []
    target_chunks: list[np.ndarray] = []
    seen = 0
    model.eval()
    if frontend is not None:
        frontend.eval()
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    stopped = stop is not None and stop()  # already stopping: start no loader workers
    try:
        with torch.inference_mode(), batches(() if stopped else loader) as loader_batches:
            while True:
                try:
                    batch = next(loader_batches)
                except StopIteration:
                    break
                except RuntimeError as err:  # a worker that died during a stop is the stop
                    if not (worker_died(err) and stop is not None and stop()):
                        raise
                if stop is not None and stop():
                    stopped = True
                    break
                if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3, 4, 5):
                    raise ValueError(
                        "predict: each batch must be (waveform, target[, events, strong]"
                        f"[, index]), got {type(batch).__name__}"
                    )
                x, y = batch[0], batch[1]
                n = x.shape[0]
                if len(batch) in (3, 5):  # the index comes last, after any strong labels
                    idx = torch.as_tensor(batch[-1]).reshape(-1).cpu().numpy().astype(np.int64)
                else:
                    if sampler_indices is None:
                        sampler_indices = _sampler_indices(loader)
                    idx = np.asarray(sampler_indices[seen : seen + n], dtype=np.int64)
                if len(idx) != n:
                    raise RuntimeError(
                        f"predict: batch of {n} clips but {len(idx)} indices; the loader yields "
                        "more clips than its sampler lists"
                    )
                seen += n
                x = x.to(device, non_blocking=True)
                if frontend is not None:
                    x = frontend(x)
                with autocast:
                    logits = model(x)
                if logits.shape[0] != n or logits.ndim != 2:
                    raise RuntimeError(
                        f"predict: model returned shape {tuple(logits.shape)}, expected ({n}, C)"
                    )
                if tuple(y.shape) != tuple(logits.shape):
                    raise ValueError(
                        f"predict: targets have shape {tuple(y.shape)} but the model outputs "
                        f"{tuple(logits.shape)}; check data.num_classes against the model head"
                    )
                logits = logits.float()
                probs = logits.sigmoid() if activation == "sigmoid" else logits.softmax(1)
                score_chunks.append(probs.cpu().numpy())
                target_chunks.append(y.float().cpu().numpy())
                idx_chunks.append(idx)
    finally:
        for module, training in modes:
            module.train(training)

    if stop is not None and _any_rank(stopped, device):
        raise EvaluationStopped(f"evaluation stopped after {seen} clips by a stop signal")
    num_classes = score_chunks[0].shape[1] if score_chunks else 0
    local_idx = np.concatenate(idx_chunks) if idx_chunks else np.zeros(0, dtype=np.int64)
    local_s = np.concatenate(score_chunks) if score_chunks else np.zeros((0, num_classes))
    local_t = np.concatenate(target_chunks) if target_chunks else np.zeros((0, num_classes))
    all_idx, all_s, all_t = _gather(local_idx, local_s, local_t)
    scores, targets = _to_dataset_order(all_idx, all_s, all_t, len(loader.dataset))
    return scores.astype(np.float32, copy=False), targets.astype(np.float32, copy=False)

"""Class-balanced training sampler (``data.balanced_sampling``), PANNs-style, DDP-ready.

Each clip is drawn with probability proportional to ``sum_c y_c / n_c`` (its labels weighted by
the inverse of their class frequencies), with replacement, so every class is drawn about as
often as every other: a single-label clip of class c has probability ``1 / (C' n_c)`` with C'
the number of non-empty classes. An epoch draws as many clips as the dataset holds. The draw is
one global sequence seeded by (seed, epoch); rank r takes every world-th index starting at r,
so the ranks split one draw without overlap, and an epoch replayed after a resume draws the
same clips. Clips without any label get weight 0 (never drawn).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochIndex(NamedTuple):
    """A training item's index with the epoch whose augmentation draws it takes.

    Persistent loader workers hold copies of the dataset made when they started, which never
    see an epoch set in the training process later: the epoch travels with each index instead.
    """

    epoch: int
    index: int


def class_balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-clip weights ``sum_c y_c / n_c`` of a (N, C) 0/1 target matrix, normalised to sum 1."""
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[0] == 0:
        raise ValueError(f"expected a (N, C) target matrix, found shape {targets.shape}")
    counts = targets.sum(axis=0)
    inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    weights = targets @ inverse
    if weights.sum() <= 0:
        raise ValueError("balanced sampling: no training clip has a label")
    return weights / weights.sum()


class BalancedDistributedSampler(Sampler[int]):
    """Weighted draws with replacement (`class_balanced_weights`), split over DDP ranks."""

    def __init__(
        self, targets: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.weights = torch.from_numpy(class_balanced_weights(targets))
        self.num_replicas, self.rank, self.seed = int(num_replicas), int(rank), int(seed)
        self.num_samples = len(self.weights) // self.num_replicas  # per rank (drop_last)
        if self.num_samples == 0:
            raise ValueError(f"{len(self.weights)} training clips for {num_replicas} ranks")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw the next iterator yields."""
        self.epoch = int(epoch)

    def global_draw(self) -> torch.Tensor:
        """The epoch's draw over all ranks (num_samples x num_replicas indices)."""
        g = torch.Generator()
        g.manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch, 0xBA1]).generate_state(1)[0])
        )
        total = self.num_samples * self.num_replicas
        return torch.multinomial(self.weights, total, replacement=True, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_draw()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShardedEvalSampler(Sampler[int]):
    """Contiguous, disjoint, unpadded shard of range(num_samples) for one rank."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        # the first (num_samples % world_size) ranks take one extra clip
        base, extra = divmod(num_samples, world_size)
        start = rank * base + min(rank, extra)
        stop = start + base + (1 if rank < extra else 0)
        self.indices: list[int] = list(range(start, stop))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

"""Mixup for multi-label targets on the normalised log-mel."""

from __future__ import annotations

import numpy as np
import torch


class MultiLabelMixup:
    """Batch mixup with label smoothing for multi-hot targets, as in the paper's recipe.

    One ``lam ~ Beta(alpha, alpha)`` per batch and a random permutation as partner:
    ``x = lam * x + (1 - lam) * x[perm]``; targets are smoothed first, ``y * (1 - eps) + eps / C``,
    then mixed with the same ``lam``. Disabled -> inputs returned unchanged (no smoothing).
    `mix_frames` mixes frame targets with the lam and pairs of the last call.
    Written here because timm's Mixup builds one-hot targets from class indices (single-label),
    while AudioSet targets are already multi-hot.
    """

    def __init__(self, alpha: float = 0.8, label_smoothing: float = 0.1, enabled: bool = True):
        if alpha <= 0:
            raise ValueError(f"mixup alpha must be > 0, found {alpha}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), found {label_smoothing}")
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)
        self.enabled = bool(enabled)
        self.last_lam: float | None = None
        self.last_perm: torch.Tensor | None = None  # the pairs of the last batch (distillation)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[float, torch.Tensor]:
        """Draw (lam, permutation of range(n)); lam comes from a numpy Beta seeded by torch."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        lam = float(np.random.default_rng(seed).beta(self.alpha, self.alpha))
        perm = torch.randperm(n, generator=generator)
        return lam, perm

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch: x (N, ...), y (N, C) multi-hot -> mixed x, soft y."""
        if not self.enabled:
            return x, y
        if x.shape[0] != y.shape[0] or y.ndim != 2:
            raise ValueError(f"expected x (N, ...) and y (N, C), found {x.shape} and {y.shape}")
        lam, perm = self.draw(x.shape[0], generator)
        self.last_lam, self.last_perm = lam, perm
        perm = perm.to(x.device)
        y = y.float() * (1 - self.label_smoothing) + self.label_smoothing / y.shape[1]
        x = x * lam + x[perm] * (1 - lam)
        y = y * lam + y[perm] * (1 - lam)
        return x, y

    def mix_frames(
        self, frames: torch.Tensor, strong: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix frame targets (N, F, C) and strong flags (N,) with the last call's lam and pairs.

        Frames are smoothed and mixed as the clip labels are; a mixed clip is strong when both
        of its clips are (``strong & strong[perm]``). Disabled -> both returned unchanged.
        """
        if not self.enabled:
            return frames, strong
        if self.last_perm is None or self.last_lam is None:
            raise RuntimeError("mix_frames follows a call that mixed the batch; none was made")
        if frames.ndim != 3 or strong.shape != (frames.shape[0],):
            raise ValueError(
                f"expected frames (N, F, C) and strong (N,), found {tuple(frames.shape)} and "
                f"{tuple(strong.shape)}"
            )
        if frames.shape[0] != len(self.last_perm):
            raise ValueError(
                f"frames hold {frames.shape[0]} clips, the last mixed batch {len(self.last_perm)}"
            )
        lam, eps = self.last_lam, self.label_smoothing
        perm = self.last_perm.to(frames.device)
        frames = frames.float() * (1 - eps) + eps / frames.shape[-1]
        strong = strong.bool()
        return frames * lam + frames[perm] * (1 - lam), strong & strong[perm.to(strong.device)]

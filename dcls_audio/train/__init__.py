"""Trainer: DDP training loop, optimisation, checkpoints, evaluation and metrics."""

from __future__ import annotations

from typing import Any


def run(cfg: Any, **kwargs: Any) -> dict[str, Any]:
    """Train and evaluate one configuration (see `dcls_audio.train.runner.run`)."""
    from dcls_audio.train.runner import run as _run

    return _run(cfg, **kwargs)


__all__ = ["run"]

"""Trainer: DDP training loop, optimisation, checkpoints, evaluation and metrics."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def run(
    cfg: Any,
    run_dir: str | os.PathLike | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one configuration (see `dcls_audio.train.runner.run`)."""
    from dcls_audio.train.runner import run as _run

    return _run(cfg, run_dir=run_dir, on_step=on_step)


__all__ = ["run"]

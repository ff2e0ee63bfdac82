"""Run output: plain console progress lines, a JSONL metrics file, optional wandb.

Console lines rather than a redrawn bar keep SLURM log files readable; every line carries loss,
lr, samples/s and the ETA. Only the main rank constructs an active `RunLogger`.
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from dcls_audio.runfiles import METRICS_FILE, jsonable
from dcls_audio.train.distributed import all_reduce_mean

WANDB_MODES = ("disabled", "offline", "online")
# Console lines are also appended here, in the run directory: under SLURM stdout lands in the
# scheduler's output file (Hydra's own job log of train.py has the same name; lines interleave).
CONSOLE_LOG = "train.log"


def format_duration(seconds: float) -> str:
    """Seconds as ``H:MM:SS`` (or ``D-HH:MM:SS`` past a day)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    days, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h}:{m:02d}:{s:02d}"


class RunLogger:
    """Console, JSONL and wandb output of one run; a no-op when ``active`` is False."""

    def __init__(
        self,
        run_dir: str | Path,
        active: bool = True,
        wandb_cfg: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        stream: Any = None,
    ) -> None:
        self.active = active
        self.run_dir = Path(run_dir)
        self.stream = stream if stream is not None else sys.stdout
        self._wandb = None
        self._jsonl = self._console = None
        if not active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._console = open(self.run_dir / CONSOLE_LOG, "a", encoding="utf-8")  # noqa: SIM115
        self._wandb = _start_wandb(wandb_cfg or {}, self.run_dir, config or {})

    def print(self, message: str) -> None:
        """One console line, flushed at once (SLURM buffers otherwise)."""
        if self.active:
            print(message, file=self.stream, flush=True)
            print(message, file=self._console, flush=True)

    def record(self, kind: str, values: dict[str, Any], step: int | None = None) -> None:
        """Append ``{"type": kind, "time": ..., **values}`` to the JSONL file; mirror to wandb."""
        if not self.active:
            return
        entry = {"type": kind, "time": round(time.time(), 3), **jsonable(values)}
        if step is not None:
            entry["step"] = int(step)
        self._jsonl.write(json.dumps(entry) + "\n")
        self._jsonl.flush()
        if self._wandb is not None:
            scalars = {
                f"{kind}/{k}": v
                for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            self._wandb.log(scalars, step=step)

    def train_progress(
        self,
        epoch: int,
        epochs: int,
        step: int,
        total_steps: int,
        loss: float,
        lr: float,
        samples_per_s: float,
        eta_s: float,
    ) -> None:
        """Console progress line for a training step."""
        width = len(str(total_steps))
        self.print(
            f"epoch {epoch + 1}/{epochs} step {step:>{width}}/{total_steps} "
            f"loss {loss:.4f} lr {lr:.3e} {samples_per_s:.1f} samples/s "
            f"eta {format_duration(eta_s)}"
        )

    def eval_report(self, epoch: int, step: int, metrics: dict[str, Any]) -> None:
        """Console line and JSONL entry of an evaluation."""
        line = (
            f"eval epoch {epoch + 1}: mAP {metrics['map']:.4f} mAUC {metrics['mauc']:.4f} "
            f"d' {metrics['dprime']:.3f}"
        )
        if "map_ema" in metrics:
            line += f" | EMA mAP {metrics['map_ema']:.4f}"
        self.print(line)
        self.record("eval", {"epoch": epoch, **metrics}, step=step)

    def close(self) -> None:
        """Flush and close the JSONL and console files and the wandb run."""
        for f in (self._jsonl, self._console):
            if f is not None:
                f.close()
        self._jsonl = self._console = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(wandb_cfg: dict[str, Any], run_dir: Path, config: dict[str, Any]) -> Any:
    """A wandb run in ``run_dir`` unless mode is disabled; wandb is imported only when used."""
    mode = str(wandb_cfg.get("mode", "offline")).lower()
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb.mode={mode!r}: expected one of {', '.join(WANDB_MODES)}")
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb is not installed; continuing without it", stacklevel=2)
        return None
    # One wandb run per run directory, so a resumed run continues its curves.
    id_file = run_dir / "wandb_id.txt"
    run_id = wandb_cfg.get("id")
    if not run_id:
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
    try:
        return wandb.init(
            mode=mode,
            project=wandb_cfg.get("project", "dcls-audio"),
            entity=wandb_cfg.get("entity"),
            name=wandb_cfg.get("name"),
            tags=list(wandb_cfg.get("tags") or []),
            dir=str(run_dir),
            config=config,
            id=run_id,
            resume="allow",
            reinit="finish_previous",
        )
    except Exception as exc:  # a wandb outage must never stop training
        warnings.warn(f"wandb.init failed ({exc}); continuing without wandb", stacklevel=2)
        return None


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops before saving anything."""


class StepLog:
    """Windowed training-progress lines and JSONL entries (loss, lr, samples/s, ETA)."""

    def __init__(
        self,
        logger: RunLogger,
        optimizer: torch.optim.Optimizer,
        *,
        every: int,
        epochs: int,
        total_steps: int,
        global_batch_size: int,
        device: torch.device,
    ) -> None:
        self.logger, self.optimizer, self.every = logger, optimizer, every
        self.epochs, self.total_steps, self.batch = epochs, total_steps, global_batch_size
        self.device = device
        self.start(0, 0)

    def start(self, epoch: int, step: int) -> None:
        """Begin an epoch at optimizer step ``step``: reset the window and the epoch's loss."""
        self.epoch, self.epoch_steps, self.epoch_start_step = epoch, 0, step
        self.epoch_loss = torch.zeros((), device=self.device)
        self.window_loss = torch.zeros((), device=self.device)
        self.window_terms: dict[str, torch.Tensor] = {}
        self.window_steps = 0
        self.epoch_start = self.window_start = time.perf_counter()

    def __call__(
        self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Account one optimizer step; write a line every ``every`` steps and at the end.

        ``terms``: named parts of the loss (the frame loss), logged as their window means.
        """
        self.window_loss += loss
        for name, value in (terms or {}).items():
            self.window_terms[name] = self.window_terms.get(name, 0.0) + value
        self.window_steps += 1
        self.epoch_steps += 1
        if self.window_steps == self.every or step == self.total_steps:
            self._flush(step)

    def _check(self, loss: float, step: int, steps: int) -> None:
        """Stop the run (every rank: the loss is reduced) when the loss is not finite."""
        if math.isfinite(loss):
            return
        first = step - steps + 1
        self.logger.record("error", {"epoch": self.epoch, "loss": loss}, step=step)
        raise NonFiniteLossError(
            f"training loss is {loss} over steps {first}-{step} (epoch {self.epoch + 1}): "
            "stopping before anything is saved, so last.pt/best.pt keep the last good epoch. "
            "Causes: a learning rate too high for the batch, bf16 overflow, or NaN/inf in the "
            "input data; fix it and start again in the same run directory to resume."
        )

    def _flush(self, step: int) -> None:
        loss = all_reduce_mean(self.window_loss.item() / self.window_steps, self.device)
        self._check(loss, step, self.window_steps)
        now = time.perf_counter()
        rate = self.window_steps * self.batch / max(now - self.window_start, 1e-9)
        eta = (now - self.epoch_start) / self.epoch_steps * (self.total_steps - step)
        base_groups = [g for g in self.optimizer.param_groups if "lr_scale" not in g]
        lr = (base_groups or self.optimizer.param_groups)[0]["lr"]
        self.logger.train_progress(
            self.epoch, self.epochs, step, self.total_steps, loss, lr, rate, eta
        )
        entry = {"epoch": self.epoch, "loss": loss, "lr": lr, "samples_per_s": rate}
        for name, value in sorted(self.window_terms.items()):  # the same names on every rank
            entry[name] = all_reduce_mean(float(value) / self.window_steps, self.device)
        self.window_terms = {}
        self.logger.record("train", entry, step=step)
        self.epoch_loss += self.window_loss
        self.window_loss = torch.zeros((), device=self.device)
        self.window_steps, self.window_start = 0, time.perf_counter()

    def end(self) -> dict[str, float]:
        """Epoch statistics: mean loss over ranks, time, samples, steps."""
        self.epoch_loss += self.window_loss
        elapsed = time.perf_counter() - self.epoch_start
        loss = all_reduce_mean(self.epoch_loss.item() / max(1, self.epoch_steps), self.device)
        self._check(loss, self.epoch_start_step + self.epoch_steps, self.epoch_steps)
        steps = self.epoch_steps
        return {
            "loss": loss,
            "train_time_s": elapsed,
            "samples": steps * self.batch,
            "steps": steps,
        }

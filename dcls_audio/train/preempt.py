"""Stop a run on a scheduler's signal, at an optimizer step, with a checkpoint of that step.

SLURM sends SIGUSR2 (submitit's pre-timeout signal, ``--signal=USR2@...``) or SIGTERM (time
limit, ``scancel``, preemption) to every task. `StopSignal` only records the signal; the
training loop polls it after each optimizer step (all ranks agree through one all-reduce),
saves ``last.pt`` at that step and raises `Preempted`. The handler that was installed before
(submitit's requeue) is then called once, however many signals arrived, so the requeued job
resumes from a checkpoint that already exists. Run again in the same directory to resume.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preempted(SystemExit):
    """The run stopped on a signal after saving a checkpoint at the current step.

    A `SystemExit` (status 1, with its message): neither Hydra nor submitit records it as the
    job's result, so a sweep keeps waiting for the requeued job instead of failing.
    """


class StopSignal:
    """Records SIGUSR2/SIGTERM while installed (a context manager); `requested` polls them."""

    def __init__(self, device: torch.device, signals: tuple[int, ...] = SIGNALS) -> None:
        self.device = device
        self.signals = signals
        self.received: int | None = None
        self._frame: FrameType | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # handlers need the main thread
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received, self._frame = signum, frame

    def requested(self) -> bool:
        """True on every rank when any rank has received a stop signal."""
        flag = self.received is not None
        if not dist.is_initialized():
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def forward(self) -> None:
        """Hand the received signal to the handler installed before (e.g. submitit's requeue)."""
        previous = self._previous.get(self.received) if self.received else None
        if callable(previous):
            previous(self.received, self._frame)

    def name(self) -> str:
        """Name of the received signal (or 'a stop request' when another rank received it)."""
        return signal.Signals(self.received).name if self.received else "a stop request"


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave stopping to the training process.

    SLURM signals every process of a job; a loader worker killed by SIGTERM would make the
    training process fail before it saves the step.
    """
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)

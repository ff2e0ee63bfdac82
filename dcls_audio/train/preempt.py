"""Stop a run on a signal, at an optimizer step, with a checkpoint of that step; then exit.

SIGTERM (time limit, ``scancel``, preemption, ``kill``, ``timeout``, a container or service
stop), SIGUSR2 (submitit's pre-timeout signal, ``--signal=USR2@...``) and SIGINT (Ctrl-C) stop a
run. `StopSignal` only records the signal; the training loop polls it after each optimizer step
(all ranks agree through one all-reduce), saves ``last.pt`` at that step and raises `Preempted`,
whose exit status is 128 + the signal number, as a shell reports a process the signal ended:
143 for SIGTERM, 140 for SIGUSR2, 130 for SIGINT. A second SIGINT stops at once without saving
(`KeyboardInterrupt`; ``last.pt`` stays the previous complete one). The handler installed before
(submitit's requeue) is then called once, however many signals arrived, so the requeued job
resumes from a checkpoint that already exists. Run again in the same directory to resume.

Loader workers leave the stop signals to the training process (`dcls_audio.workers`: born with
them blocked, so a signal to the whole process group cannot kill one, not even while it
starts); they end when the loop shuts them down (`batches`, `shutdown_workers`). Once a stop
signal has been received, a worker that dies anyway (killed from outside) is part of the stop,
not an error (`worker_died`; `StopSignal` holds back torch's SIGCHLD error until the loop has
saved the step).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from dcls_audio.workers import STOP_SIGNALS, worker_died


def exit_status(signum: int) -> int:
    """Exit status of a process stopped by ``signum``: 128 + signum (143 for SIGTERM)."""
    return 128 + int(signum)


def _say(message: str) -> None:
    """Write a line to stderr without Python's buffers (safe inside a signal handler)."""
    with contextlib.suppress(OSError):
        os.write(2, f"{message}\n".encode())


class Preempted(SystemExit):
    """The run stopped on a signal after saving a checkpoint at the current step.

    A `SystemExit` with status 128 + the signal number (143 SIGTERM, 140 SIGUSR2, 130 SIGINT):
    neither Hydra nor submitit records it as the job's result, so a sweep keeps waiting for the
    requeued job instead of failing, and schedulers that retry on 128-255 (a process ended by a
    signal) retry it. ``str()`` is the message.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(exit_status(signum))
        self.message = message
        self.signum = int(signum)

    def __str__(self) -> str:
        return self.message


class StopSignal:
    """Records SIGUSR2/SIGTERM/SIGINT while installed (a context manager); `requested` polls them.

    A SIGINT after a recorded stop raises `KeyboardInterrupt` at once (Ctrl-C twice).
    """

    def __init__(self, device: torch.device, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.device = device
        self.signals = signals
        self.received: int | None = None  # the first signal this process received
        self.signum: int | None = None  # the stop signal all ranks agreed on (`requested`)
        self.interrupted = False  # a second SIGINT: stop now
        self._previous: dict[int, Any] = {}
        self._child_handler: Any = None  # torch's SIGCHLD handler, while it is wrapped

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # handlers need the main thread
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._child_handler is not None:
            signal.signal(signal.SIGCHLD, self._child_handler)
            self._child_handler = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            again = " (Ctrl-C again: stop now, without saving)" if signum == signal.SIGINT else ""
            _say(f"{name}: stopping after this optimizer step, with a checkpoint{again}")
            self._hold_worker_errors()
        elif signum == signal.SIGINT:
            _say(f"{name} again: stopping now; last.pt keeps the last completed save")
            self.interrupted = True
            raise KeyboardInterrupt

    def _hold_worker_errors(self) -> None:
        """From now on a loader worker's death is not raised mid-step by torch's SIGCHLD handler.

        The step under way finishes; the loop then stops before fetching another batch.
        """
        previous = signal.getsignal(signal.SIGCHLD)
        if not callable(previous) or self._child_handler is not None:
            return

        def on_child(signum: int, frame: FrameType | None) -> None:
            try:
                previous(signum, frame)
            except RuntimeError as err:
                if not worker_died(err):
                    raise
                _say(f"during the stop: {err}")

        self._child_handler = previous
        signal.signal(signal.SIGCHLD, on_child)

    def pending(self) -> bool:
        """True when this process has received a stop signal (no communication)."""
        return self.received is not None

    def requested(self) -> bool:
        """True on every rank when any rank has received a stop signal (a collective)."""
        signum = self.received or 0
        if dist.is_initialized():
            t = torch.tensor([signum], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            signum = int(t.item())
        if signum:
            self.signum = signum
        return bool(signum)

    def name(self) -> str:
        """Name of the stop signal (or 'a stop request' before one is known)."""
        signum = self.signum or self.received
        return signal.Signals(signum).name if signum else "a stop request"

    def preempted(self, message: str) -> Preempted:
        """The `Preempted` exit for this stop (status 128 + the signal number)."""
        return Preempted(message, self.signum or self.received or signal.SIGTERM)

    def forward(self) -> None:
        """Hand the received signal to the handler installed before (e.g. submitit's requeue).

        Python's own SIGINT handler is not called: it would turn the saved stop into a
        `KeyboardInterrupt`.
        """
        previous = self._previous.get(self.received) if self.received else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.received, None)


@contextlib.contextmanager
def exit_on_signal(command: str) -> Iterator[None]:
    """SIGTERM/SIGUSR2/SIGINT raise ``SystemExit(128 + signum)`` (commands with nothing to save).

    The exit unwinds the stack, so ``finally`` blocks (loader shutdown, process group) still run.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        _say(f"{command}: stopped by {signal.Signals(signum).name}")
        raise SystemExit(exit_status(signum))

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def batches(loader: Iterable) -> Iterator[Iterator]:
    """``iter(loader)``, whose worker processes are shut down when the block ends.

    Without this an iterator kept alive by a traceback (an error, a stop) keeps its workers
    until the interpreter's exit, where multiprocessing joins them. A loader with persistent
    workers keeps them when the block ends normally (the next epoch reuses them) and shuts
    them down when it ends by an exception; `shutdown_workers` ends them for good.
    """
    it = iter(loader)
    persistent = getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0)
    ok = False
    try:
        yield it
        ok = True
    finally:
        if persistent and not ok:
            shutdown_workers(loader)
        elif not persistent:
            shutdown = getattr(it, "_shutdown_workers", None)  # torch's multi-process iterator
            if shutdown is not None:
                shutdown()
            elif hasattr(it, "close"):  # a generator over a loader (e.g. a progress bar)
                it.close()


def shutdown_workers(loader: Any) -> None:
    """End the persistent workers of a DataLoader (nothing when it has none running)."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
        loader._iterator = None

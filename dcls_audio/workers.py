"""Worker processes that leave the stop signals to the process that started them.

Loader workers and the packers' pools are started with SIGTERM, SIGUSR2 and SIGINT blocked
(`stop_safe_context`: the parent blocks them around the fork, the child inherits the mask) and
keep them blocked for life, taken by a thread (`loader_worker_init`). A signal sent to the whole
process group (a terminal's Ctrl-C, SLURM, torchrun) therefore never kills a worker, not even
one that is just starting, and the parent decides what a stop means (save a step, exit). The
workers still end when the parent shuts them down or terminates them, and die with it
(``PR_SET_PDEATHSIG``) if it is killed. The lowest layer: datasets/ and train/ both use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.context as mp_context
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_died(err: BaseException) -> bool:
    """True for torch's error of a DataLoader worker that ended unexpectedly."""
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM, SIGUSR2 and SIGINT in this thread; one that arrives is delivered after."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _StopSafeStart:
    """A process started with the stop signals blocked: it inherits the mask from birth."""

    def start(self) -> None:
        """Start the process (fork, or fork + exec) with the stop signals blocked."""
        with stop_signals_blocked():
            super().start()  # type: ignore[misc]


# Module-level classes: a spawned child unpickles its process object by name.
class StopSafeForkProcess(_StopSafeStart, mp_context.ForkProcess):
    """`ForkProcess` started with the stop signals blocked."""


class StopSafeSpawnProcess(_StopSafeStart, mp_context.SpawnProcess):
    """`SpawnProcess` started with the stop signals blocked."""


class StopSafeForkServerProcess(_StopSafeStart, mp_context.ForkServerProcess):
    """`ForkServerProcess` started with the stop signals blocked (the server too, if it starts)."""


class _StopSafeFork(mp_context.ForkContext):
    Process = StopSafeForkProcess


class _StopSafeSpawn(mp_context.SpawnContext):
    Process = StopSafeSpawnProcess


class _StopSafeForkServer(mp_context.ForkServerContext):
    Process = StopSafeForkServerProcess


_CONTEXTS = {"fork": _StopSafeFork, "spawn": _StopSafeSpawn, "forkserver": _StopSafeForkServer}


def stop_safe_context(method: str | None = None) -> mp_context.BaseContext:
    """A multiprocessing context whose processes are born with the stop signals blocked.

    For DataLoader's ``multiprocessing_context``, ``Pool`` and ``ProcessPoolExecutor``; pair it
    with `loader_worker_init` in the child, which keeps them blocked and takes them on a thread.
    ``method``: the start method (None: the platform's default).
    """
    method = method or multiprocessing.get_start_method()
    if method not in _CONTEXTS:
        raise ValueError(f"unknown start method {method!r}; expected one of {sorted(_CONTEXTS)}")
    return _CONTEXTS[method]()


def loader_options(num_workers: int, persistent: bool = False) -> dict[str, Any]:
    """DataLoader keyword arguments for ``num_workers`` stop-safe workers (none: in process).

    ``persistent``: the workers live as long as the loader (not one start per epoch).
    """
    if num_workers <= 0:
        return {"num_workers": 0}
    return {
        "num_workers": int(num_workers),
        "worker_init_fn": loader_worker_init,
        "multiprocessing_context": stop_safe_context(),
        "persistent_workers": bool(persistent),
    }


def _parent_pid() -> int:
    """Process id of the process that started this one."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def _alive(pid: int) -> bool:
    """True while process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _no_op(signum: int, frame: FrameType | None) -> None:
    """A signal handler that does nothing."""


def _watch_stop_signals(parent: int) -> None:
    """Worker thread: take the blocked stop signals; exit on the parent's own SIGTERM only.

    A SIGTERM from the parent is `Process.terminate()` (the loader or multiprocessing shutting
    the worker down); SIGTERM, SIGUSR2 or SIGINT from anyone else is a stop for the parent to
    act on, after which it shuts the workers down itself.
    """
    while True:
        info = signal.sigwaitinfo(set(STOP_SIGNALS))
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)


def loader_worker_init(worker_id: int = 0) -> None:
    """A worker's init (DataLoader ``worker_init_fn``, pool initializer): leave stops to the parent.

    The worker dies with its parent (``PR_SET_PDEATHSIG`` = SIGKILL on Linux; torch's own
    watchdog elsewhere), keeps SIGTERM, SIGUSR2 and SIGINT blocked (started by
    `stop_safe_context`, it was born so) and takes them on a thread that exits only on its
    parent's SIGTERM, so that the parent can still terminate it. A signal that arrived before
    this init ran is pending, and the thread takes it too.
    """
    parent = _parent_pid()  # the starting process (a fork server's child: not its parent)
    if sys.platform.startswith("linux"):
        forked_by = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != forked_by or not _alive(parent):  # died before prctl took effect
            os._exit(1)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for sig in STOP_SIGNALS:  # handled, not ignored: an ignored signal never reaches sigwaitinfo
        signal.signal(sig, _no_op)
    watcher = threading.Thread(
        target=_watch_stop_signals, args=(parent,), name="stop-signals", daemon=True
    )
    watcher.start()

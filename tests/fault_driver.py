"""Run a command of the package with a fault injected where the environment says (test_faults).

    python tests/fault_driver.py train OVERRIDE ...       # the Hydra app of train.py
    python tests/fault_driver.py evaluate ARG ...         # dcls-audio-evaluate
    python tests/fault_driver.py demo ARG ...             # dcls-audio-demo

``FAULT_DIR`` is where the driver and the test meet through files. A pause writes
``FAULT_DIR/paused`` and waits (at most a minute) for ``FAULT_DIR/release``, so that the test
can send its signal at that exact moment; the signal handlers of the process still run during
the wait. What happens where:

- ``FAULT_PAUSE=step:K``: after optimizer step K.
- ``FAULT_PAUSE=eval:K``: in the first evaluation clip read after step K (in a loader worker
  when there are workers).
- ``FAULT_PAUSE=save:N``: in the middle of writing the N-th ``last.pt`` (a partial temporary
  file beside it).
- ``FAULT_PAUSE=item:0``: in the first clip read (evaluate).
- ``FAULT_PAUSE=worker:N``: in the N-th loader worker process to start (counted over the run,
  training and evaluation loaders), after torch's worker set-up and before the worker's own
  init: the moment a starting worker is most exposed to a signal sent to the group.
- ``FAULT_FSIZE=K:BYTES``: after step K, a file size limit (RLIMIT_FSIZE) of BYTES in the
  training process (not in its loader workers, whose batches are shared-memory files).
- ``FAULT_TRUNCATE=K:PATH``: after step K, PATH is cut to a third of its size.
- ``FAULT_PREHANDLER=1``: a SIGUSR2 handler installed before training (as submitit's) that
  appends a line to ``FAULT_DIR/forwarded``.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

FAULT_DIR = Path(os.environ.get("FAULT_DIR", "."))


def pause(where: str) -> None:
    """Tell the test where the process is, then wait for its release (signals still handled)."""
    (FAULT_DIR / "paused").write_text(f"{where} {os.getpid()}\n")
    deadline = time.monotonic() + 60
    while not (FAULT_DIR / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _at(spec: str) -> tuple[str, str]:
    point, _, arg = spec.partition(":")
    return point, arg


def on_step_hook() -> Any:
    """The ``on_step`` callback of the faults that happen after an optimizer step."""
    pause_at = _at(os.environ.get("FAULT_PAUSE", ""))
    fsize = _at(os.environ.get("FAULT_FSIZE", ""))
    cut = _at(os.environ.get("FAULT_TRUNCATE", ""))

    def hook(step: int) -> None:
        if pause_at == ("step", str(step)):
            pause(f"step {step}")
        if pause_at == ("eval", str(step)):
            (FAULT_DIR / "armed").touch()
        if fsize[0] == str(step):
            limit = int(fsize[1])
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        if cut[0] == str(step):
            os.truncate(cut[1], os.path.getsize(cut[1]) // 3)

    return hook


def patch_reads(point: str) -> None:
    """Pause in the first evaluation clip read once armed (``eval``), or in the first (``item``)."""
    from dcls_audio.data.hdf5 import AudioSetHDF5

    read = AudioSetHDF5.__getitem__

    def getitem(self: AudioSetHDF5, index: int) -> Any:
        armed = point == "item" or (FAULT_DIR / "armed").exists()
        if not self.train and armed and not (FAULT_DIR / "paused").exists():
            pause(f"eval read {index}")
        return read(self, index)

    AudioSetHDF5.__getitem__ = getitem


class _PausingFile:
    """A binary file that pauses once, after its first 4 KiB (a save half written)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self._written, self._paused = f, 0, False

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self._written += n
        if self._written > 4096 and not self._paused:
            self._paused = True
            self._f.flush()
            pause(f"saving ({self._written} bytes written)")
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def patch_saves(nth: int) -> None:
    """Pause in the middle of the ``nth`` write of last.pt."""
    from dcls_audio.train import checkpoint

    write_file = checkpoint.atomic_write
    count = {"last": 0}

    def atomic_write(path: Any, write: Any) -> Path:
        if Path(path).name == checkpoint.LAST:
            count["last"] += 1
            if count["last"] == nth:
                return write_file(path, lambda f: write(_PausingFile(f)))
        return write_file(path, write)

    checkpoint.atomic_write = atomic_write


def _worker_ordinal() -> int:
    """This worker's place among the run's worker starts (1, 2, ...), counted through files."""
    n = 1
    while True:
        try:
            os.close(os.open(FAULT_DIR / f"worker-start-{n}", os.O_CREAT | os.O_EXCL))
            return n
        except FileExistsError:
            n += 1


def patch_worker_start(nth: int) -> None:
    """Pause in the ``nth`` loader worker to start, before its init runs."""
    from dcls_audio import workers

    init = workers.loader_worker_init

    def paused_init(worker_id: int = 0) -> None:
        if _worker_ordinal() == nth:
            pause(f"worker {worker_id} starting")
        init(worker_id)

    workers.loader_worker_init = paused_init


def install_faults() -> None:
    """Patch the package as the FAULT_* variables say."""
    point, arg = _at(os.environ.get("FAULT_PAUSE", ""))
    if point in ("eval", "item"):
        patch_reads(point)
    if point == "worker":
        patch_worker_start(int(arg))
    if point == "save":
        patch_saves(int(arg))
    if os.environ.get("FAULT_FSIZE"):  # the run directory's disk fills up, not /dev/shm
        from dcls_audio import workers

        worker_init = workers.loader_worker_init

        def unlimited_worker(worker_id: int) -> None:
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            worker_init(worker_id)

        workers.loader_worker_init = unlimited_worker
    if os.environ.get("FAULT_PREHANDLER"):

        def requeue(signum: int, frame: Any) -> None:  # stands for submitit's handler
            with open(FAULT_DIR / "forwarded", "a") as f:
                f.write(f"{signum}\n")

        signal.signal(signal.SIGUSR2, requeue)
    from dcls_audio.train import runner

    run, hook = runner.run, on_step_hook()

    def run_with_faults(cfg: Any, run_dir: Any = None, on_step: Any = None) -> dict:
        return run(cfg, run_dir=run_dir, on_step=on_step or hook)

    runner.run = run_with_faults


def main() -> None:
    """Install the faults, then run the command named by the first argument."""
    command, args = sys.argv[1], sys.argv[2:]
    install_faults()
    if command == "train":
        from dcls_audio.train.__main__ import main as train

        sys.argv = ["train.py", *args]
        train()
    elif command == "evaluate":
        from dcls_audio.evaluate import main as evaluate

        sys.exit(evaluate(args))
    elif command == "demo":
        from dcls_audio.demo import main as demo

        sys.exit(demo(args))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()

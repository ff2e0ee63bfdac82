"""Helpers of test_faults: start a command in its own session, stop it, look at what is left.

A command runs through ``tests/fault_driver.py`` (faults from FAULT_* variables) or as the
user runs it (``train.py``, ``dcls-audio-demo``), in a new session so that a signal can go to
its whole process group without reaching pytest. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from conftest import ROOT

DRIVER = ROOT / "tests" / "fault_driver.py"
BIN = Path(sys.executable).parent  # the console scripts of the environment
EXIT_TIMEOUT_S = 15.0  # a process still there this long after its signal has hung
BAR_S = 10.0  # the bar: exit within 10 s of the signal


def env(fault_dir: Path | None = None, **faults: str) -> dict[str, str]:
    """Environment of a command: one BLAS thread, no wandb, the FAULT_* variables given."""
    out = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        out.pop(var, None)
    out = {k: v for k, v in out.items() if not k.startswith("FAULT_")}
    if fault_dir is not None:
        out["FAULT_DIR"] = str(fault_dir)
    out.update({f"FAULT_{k.upper()}": str(v) for k, v in faults.items()})
    return out


def start(cmd: list[str], log: Path, environ: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in the repository root, in a new session, output into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def driver(command: str, *args: str) -> list[str]:
    """The command line of ``fault_driver.py COMMAND ARGS``."""
    return [sys.executable, str(DRIVER), command, *args]


def torchrun(*args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (a script and its arguments)."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [*run, *args]


def stacks(pids: list[int]) -> str:
    """Native stacks of ``pids`` (gdb, when installed): where a hung process waits."""
    if not shutil.which("gdb"):
        return ""
    out = []
    for pid in pids:
        cmd = ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 15"]
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            out.append(f"--- {pid}\n" + "\n".join(
                x for x in done.stdout.splitlines() if x.startswith(("#", "Thread"))
            ))  # fmt: skip
    return "\n".join(out)


def wait_exit(proc: subprocess.Popen, timeout: float, log: Path | None = None) -> int | None:
    """The exit status, or None after ``timeout`` seconds (the process group is then killed).

    The native stacks of a hung process and its descendants are appended to ``log``.
    """
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        below = descendants(proc.pid)
        if log is not None:
            hung = [p for p in [*reversed(below), proc.pid] if running(p)]  # deepest first
            with open(log, "a") as f:
                f.write(f"\nstill running after {timeout:.0f} s: {hung}\n{stacks(hung)}\n")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in below:  # torchrun's ranks are in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        return None


def run_to_end(cmd: list[str], log: Path, environ: dict[str, str], timeout: float = 300) -> str:
    """Run ``cmd`` to its end; its output. Fails unless it exits 0."""
    proc = start(cmd, log, environ)
    rc = wait_exit(proc, timeout, log)
    output = log.read_text(errors="replace")
    assert rc == 0, f"{' '.join(cmd)} exited {rc}:\n{output[-6000:]}"
    return output


def _children() -> dict[int, list[int]]:
    """Child process ids of every process (from /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (loader workers, torchrun's ranks and theirs)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def left_running(pids: list[int], grace: float = 3.0) -> list[int]:
    """The ``pids`` still running after up to ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while (alive := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@dataclass
class Stopped:
    """How a stopped process ended."""

    rc: int | None  # None: still running EXIT_TIMEOUT_S after the signal (then killed)
    exit_s: float  # from the last signal to the exit
    output: str
    workers: list[int] = field(default_factory=list)  # its descendants when signalled
    left: list[int] = field(default_factory=list)  # descendants still running after the exit


def wait_paused(proc: subprocess.Popen, fault_dir: Path, log: Path, timeout: float = 240) -> None:
    """Wait for the driver's pause (``fault_dir/paused``); fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not (fault_dir / "paused").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            wait_exit(proc, 0.1)
            raise AssertionError(
                f"no pause (exit {proc.returncode}):\n{log.read_text(errors='replace')[-6000:]}"
            )
        time.sleep(0.02)
    time.sleep(0.1)  # into the wait loop


def stop(
    proc: subprocess.Popen,
    log: Path,
    signals: list[int],
    group: bool,
    fault_dir: Path | None = None,
    release_after: tuple[str, int] | None = None,
) -> Stopped:
    """Send ``signals`` (0.3 s apart) to the process or its group, release a pause, wait.

    ``release_after=(text, n)`` releases the pause once ``text`` is n times in the output
    (a launcher that passes the signal on), or after 10 s.
    """
    workers = descendants(proc.pid)
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.3)
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if group else os.kill)(proc.pid, sig)
    sent = time.monotonic()
    if release_after is not None:
        text, n = release_after
        while log.read_text(errors="replace").count(text) < n and time.monotonic() < sent + 10:
            time.sleep(0.05)
    if fault_dir is not None:
        (fault_dir / "release").touch()
    rc = wait_exit(proc, EXIT_TIMEOUT_S, log)
    exit_s = time.monotonic() - sent
    return Stopped(rc, exit_s, log.read_text(errors="replace"), workers, left_running(workers))


def load(path: Path) -> dict:
    """A checkpoint, loaded as the trainer loads it."""
    return torch.load(path, map_location="cpu", weights_only=True)


def temporaries(run_dir: Path) -> list[str]:
    """Temporary files of unfinished saves in a run directory."""
    return sorted(p.name for p in run_dir.glob(".*.tmp"))


def assert_same_final_state(run_dir: Path, reference: Path) -> None:
    """Bitwise-equal weights, EMA, optimizer state, schedule and metrics of two finished runs."""
    a, b = load(run_dir / "last.pt"), load(reference / "last.pt")
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for part in ("model", "ema"):
        if a[part] is None or b[part] is None:
            assert a[part] is b[part] is None, part
            continue
        differ = [k for k in b[part] if not torch.equal(a[part][k], b[part][k])]
        assert not differ, f"{part}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler"] == b["scheduler"]
    ra, rb = (p / "results.json" for p in (run_dir, reference))
    ma, mb = json.loads(ra.read_text()), json.loads(rb.read_text())
    for key in ("map", "mauc", "per_class_ap", "num_eval_clips"):
        assert ma[key] == mb[key], key

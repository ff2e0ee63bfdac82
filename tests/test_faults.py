"""Faults: every stop ends the process, leaves a usable run directory, and resumes exactly.

Each cell runs a tiny CPU training (3 epochs of 4 optimizer steps, evaluated after each, EMA,
mixup, erasing, drop path) in its own session, stops it at a chosen moment and checks: the
process and its loader workers end (within 10 s of the signal), the exit status, what is on
disk (last.pt at the expected step, no temporary file), and that running the same command
again ends with the weights, optimizer state and metrics of an uninterrupted run. Moments are
in epoch 2: a step inside it, its last step (the epoch boundary), its evaluation, and the
middle of writing its last.pt. The covering subset runs in `make test`; the whole matrix (marker
``faults``) in `make test-faults` (``pytest --faults tests/test_faults.py``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import time

import pytest
from conftest import tiny_overrides
from faultlib import (
    BAR_S,
    BIN,
    Stopped,
    assert_same_final_state,
    descendants,
    driver,
    env,
    load,
    run_to_end,
    running,
    start,
    stop,
    temporaries,
    torchrun,
    wait_exit,
    wait_paused,
)

SPE = 4  # optimizer steps per epoch: 8 clips, batch 2
SIGNALS = {
    "TERM": [signal.SIGTERM],
    "USR2": [signal.SIGUSR2],
    "USR2+handler": [signal.SIGUSR2],  # a handler installed before, as submitit's
    "INT": [signal.SIGINT],
    "INTx2": [signal.SIGINT, signal.SIGINT],
}
STATUS = {"TERM": 143, "USR2": 140, "USR2+handler": 140, "INT": 130, "INTx2": -signal.SIGINT}
MOMENTS = ("step", "boundary", "eval", "save")
PAUSE = {"boundary": f"step:{2 * SPE}", "eval": f"eval:{2 * SPE}", "save": "save:2"}
TIMES: list[tuple[str, int | None, float]] = []  # (cell, exit status, seconds to exit)

# In `make test`: each signal, moment, target and worker count at least once.
FAST = [
    ("TERM", "step", "group", 1),
    ("INTx2", "save", "pid", 0),
    ("USR2+handler", "eval", "group", 2),
    ("INT", "boundary", "pid", 0),
]


def _matrix() -> list:
    """Every signal at every moment; the target and worker count rotate over the cells."""
    cells = []
    for s, name in enumerate(SIGNALS):
        for m, moment in enumerate(MOMENTS):
            cell = (name, moment, ("pid", "group")[(s + m) % 2], (0, 1, 3)[(s + 2 * m) % 3])
            if cell[:2] not in {c[:2] for c in FAST}:
                cells.append(pytest.param(*cell, marks=pytest.mark.faults, id=cell_id(*cell)))
    return [pytest.param(*c, marks=pytest.mark.slow, id=cell_id(*c)) for c in FAST] + cells


def cell_id(name: str, moment: str, target: str, workers: int) -> str:
    """``TERM-step-group-w1``."""
    return f"{name}-{moment}-{target}-w{workers}"


def overrides(data_root, workers: int, *extra: str, batch: int = 2) -> list[str]:
    """The tiny run (see the module docstring) with ``workers`` loader workers."""
    base = [o for o in tiny_overrides(data_root) if not o.startswith("data.num_workers")]
    return [
        *base, f"data.num_workers={workers}", f"trainer.batch_size={batch}",
        "trainer.global_batch_size=2", "optim.lr_ref_batch=2", "trainer.epochs=3",
        "trainer.warmup_epochs=1", "trainer.eval_every=1", "trainer.max_eval_samples=4",
        "trainer.eval_batch_size=2", "trainer.ema=true", "trainer.ema_decay=0.5",
        "+model.timm_kwargs.dims=[8,16,32,64]", "+model.timm_kwargs.depths=[1,1,1,1]", *extra,
    ]  # fmt: skip


def train_py(over: list[str], run_dir) -> list[str]:
    """``python train.py OVERRIDES hydra.run.dir=RUN_DIR``, as a user runs it."""
    return [sys.executable, "train.py", *over, f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def data_root(synthetic_root):
    return synthetic_root(8)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """An uninterrupted run of the cells' configuration."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_to_end(train_py(overrides(data_root, 0), run_dir), run_dir.with_suffix(".log"), env())
    return run_dir


@pytest.fixture(scope="module", autouse=True)
def exit_times(request):
    """Print each stopped process's exit status and time after the module's tests."""
    yield
    if TIMES:
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print("\nfault cells: exit status, seconds from the signal to the exit")
            for cell, rc, seconds in TIMES:
                print(f"  {cell:<40} {rc!s:>5} {seconds:6.2f}")


def check_exit(out: Stopped, cell: str, status: int) -> None:
    """The process exited with ``status`` within the bar, and nothing it started is left."""
    TIMES.append((cell, out.rc, out.exit_s))
    assert out.rc is not None, f"{cell}: still running {out.exit_s:.0f} s after the signal"
    assert out.rc == status, f"{cell}: exit {out.rc}, expected {status}:\n{out.output[-6000:]}"
    assert out.exit_s < BAR_S, f"{cell}: exited {out.exit_s:.1f} s after the signal"
    assert not out.left, f"{cell}: processes {out.left} outlived it (of {out.workers})"


def resume_and_compare(over: list[str], run_dir, reference, log) -> str:
    """Run train.py again in ``run_dir``: it resumes and ends as the uninterrupted run."""
    saved = (run_dir / "last.pt").exists()
    output = run_to_end(train_py(over, run_dir), log, env())
    assert f"resuming from {run_dir / 'last.pt'}" in output or not saved
    assert_same_final_state(run_dir, reference)
    assert temporaries(run_dir) == []
    return output


@pytest.mark.parametrize(("name", "moment", "target", "workers"), _matrix())
def test_stop_signal(name, moment, target, workers, data_root, reference, tmp_path):
    """A stop signal at a moment of epoch 2: exit status, last.pt, exact resume."""
    cell = cell_id(name, moment, target, workers)
    k = random.Random(cell).randint(SPE + 1, 2 * SPE - 1)  # a step inside epoch 2
    fault_dir, run_dir, log = tmp_path / "fault", tmp_path / "run", tmp_path / "run.log"
    fault_dir.mkdir()
    faults = {"pause": PAUSE.get(moment, f"step:{k}")}
    if name == "USR2+handler":
        faults["prehandler"] = "1"
    over = overrides(data_root, workers)
    proc = start(driver("train", *over, f"hydra.run.dir={run_dir}"), log, env(fault_dir, **faults))
    wait_paused(proc, fault_dir, log)
    out = stop(proc, log, SIGNALS[name], target == "group", fault_dir)
    check_exit(out, cell, STATUS[name])

    saved = load(run_dir / "last.pt")
    found = (saved["step"], saved["epoch"], saved["epoch_step"], saved["eval_pending"])
    if name == "INTx2":  # stopped at once: the save at the end of epoch 1
        expected = (SPE, 1, 0, False)
    elif moment == "step":
        expected = (k, 1, k - SPE, False)
    else:  # the epoch ended; a stop before or during its evaluation leaves it to the resume
        expected = (2 * SPE, 2, 0, moment != "save")
    assert found == expected, f"{cell}: (step, epoch, epoch_step, eval_pending) {found}"
    assert temporaries(run_dir) == [], f"{cell}: a temporary file was left"
    if name != "INTx2":
        assert f"saved step {expected[0]}" in out.output
    forwarded = fault_dir / "forwarded"
    assert (forwarded.read_text().split() if forwarded.exists() else []) == (
        [str(int(signal.SIGUSR2))] if name == "USR2+handler" else []
    ), "the handler installed before is called once, after the save"
    output = resume_and_compare(over, run_dir, reference, tmp_path / "resume.log")
    if expected[3]:  # the evaluation the stop ended comes first
        assert output.index(f"eval epoch {expected[1]}") < output.index("epoch 3/3")


# (which worker start is paused, persistent training workers, how the stop comes, expected
# (step, epoch, epoch_step, eval_pending)). One loader worker; starts are counted over the run:
# with persistent training workers start 1 is the training loader's (for the whole run) and
# start 2 the first evaluation's (of the weights; 3: of the EMA); without, start 4 is the
# training loader's of epoch 2.
# "group": SIGTERM to the process group; "kill-worker": SIGTERM to the training process, then
# SIGKILL to the starting worker (a worker that dies during a stop).
WORKER_STARTS = [
    pytest.param(2, True, "group", (SPE, 1, 0, True), marks=pytest.mark.slow, id="eval-group"),
    pytest.param(
        2, True, "kill-worker", (SPE, 1, 0, True), marks=pytest.mark.slow, id="eval-kill-worker"
    ),
    pytest.param(4, False, "group", (SPE, 1, 0, False), marks=pytest.mark.faults, id="epoch-group"),
    pytest.param(
        4, False, "kill-worker", (SPE, 1, 0, False), marks=pytest.mark.faults,
        id="epoch-kill-worker",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("nth", "persistent", "how", "expected"), WORKER_STARTS)
def test_stop_while_a_loader_worker_starts(
    nth, persistent, how, expected, data_root, reference, tmp_path
):
    """A stop while a loader worker starts: the run stops at its last step, never fails.

    "group": the signal lands in the worker before its own init has run, the moment in which
    a worker born with the stop signals unblocked dies of torch's worker SIGTERM handler; it
    must live. "kill-worker": the worker dies during the stop anyway, which is part of the
    stop, not an error ("DataLoader worker exited unexpectedly"). The pause makes the moment
    certain.
    """
    cell = f"TERM-worker{nth}-{how}-{'persistent' if persistent else 'per-epoch'}"
    fault_dir, run_dir, log = tmp_path / "fault", tmp_path / "run", tmp_path / "run.log"
    fault_dir.mkdir()
    over = overrides(data_root, 1, f"data.persistent_workers={str(persistent).lower()}")
    faults = {"pause": f"worker:{nth}"}
    proc = start(driver("train", *over, f"hydra.run.dir={run_dir}"), log, env(fault_dir, **faults))
    wait_paused(proc, fault_dir, log)
    worker = int((fault_dir / "paused").read_text().split()[-1])
    assert worker != proc.pid and worker in descendants(proc.pid)
    if how == "group":
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert running(worker), "the starting worker died of the signal sent to the group"
    else:
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(worker, signal.SIGKILL)
    out = stop(proc, log, [], True, fault_dir)
    check_exit(out, cell, 143)
    saved = load(run_dir / "last.pt")
    found = (saved["step"], saved["epoch"], saved["epoch_step"], saved["eval_pending"])
    assert found == expected, f"{cell}: (step, epoch, epoch_step, eval_pending) {found}"
    assert f"saved step {expected[0]}" in out.output
    resume_and_compare(over, run_dir, reference, tmp_path / "resume.log")


def random_sigterms_after_steps(data_root, tmp_path, repeats: int, seed: int = 0) -> list:
    """SIGTERM to the group of one-step-epoch runs, 0-0.15 s after a step line; the outcomes.

    One loader worker that starts every epoch (persistent workers off), so the signal often
    lands while the next epoch's worker starts. Each outcome is (exit status, output).
    """
    rng = random.Random(seed)
    over = [
        *overrides(data_root, 1, "data.persistent_workers=false", batch=2),
        "trainer.epochs=40", "trainer.eval_every=0", "trainer.max_eval_samples=2",
        "trainer.ema=false",
    ]  # fmt: skip
    outcomes = []
    for i in range(repeats):
        run_dir, log = tmp_path / f"run{i}", tmp_path / f"run{i}.log"
        proc = start(train_py(over, run_dir), log, env())
        k = rng.randint(2, 5)
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count(" step ") < k and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        out = stop(proc, log, [signal.SIGTERM], True)
        outcomes.append((out.rc, out.output))
    return outcomes


@pytest.mark.faults
def test_random_sigterms_while_workers_start(synthetic_root, tmp_path):
    """25 SIGTERMs to one-step-epoch runs just after a step line: every one a clean stop."""
    repeats = int(os.environ.get("FAULT_REPEATS", "25"))
    outcomes = random_sigterms_after_steps(synthetic_root(2), tmp_path, repeats)
    bad = [(rc, out[-2000:]) for rc, out in outcomes if rc != 143 or "saved step" not in out]
    assert not bad, f"{len(bad)} of {repeats} did not stop cleanly; first: {bad[0]}"


@pytest.mark.slow
def test_sigkill_mid_save_keeps_the_previous_checkpoint(data_root, reference, tmp_path):
    """SIGKILL while last.pt is half written: the previous one stays; the resume cleans up."""
    fault_dir, run_dir, log = tmp_path / "fault", tmp_path / "run", tmp_path / "run.log"
    fault_dir.mkdir()
    over = overrides(data_root, 2)
    proc = start(
        driver("train", *over, f"hydra.run.dir={run_dir}"), log, env(fault_dir, pause="save:2")
    )
    wait_paused(proc, fault_dir, log)
    out = stop(proc, log, [signal.SIGKILL], group=False)
    check_exit(out, "KILL-save-pid-w2", -signal.SIGKILL)  # its workers die with it
    assert load(run_dir / "last.pt")["step"] == SPE  # the previous, complete save
    assert len(temporaries(run_dir)) == 1  # the kill came mid-save
    output = resume_and_compare(over, run_dir, reference, tmp_path / "resume.log")
    assert "removed the temporary files of a save that did not finish" in output


@pytest.mark.faults
@pytest.mark.parametrize(("seed", "workers", "group"), [(0, 0, False), (1, 1, False), (2, 3, True)])
def test_sigkill_at_a_random_moment(seed, workers, group, data_root, reference, tmp_path):
    """SIGKILL at a random time (start-up, a step, an evaluation, a save): no torn last.pt."""
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    over = overrides(data_root, workers)
    proc = start(train_py(over, run_dir), log, env())
    time.sleep(random.Random(seed).uniform(3.0, 9.0))
    out = stop(proc, log, [signal.SIGKILL], group)
    cell = f"KILL-random{seed}-{'group' if group else 'pid'}-w{workers}"
    check_exit(out, cell, -signal.SIGKILL if out.rc != 0 else 0)  # 0: it had finished
    if (run_dir / "last.pt").exists():
        load(run_dir / "last.pt")  # complete (a torn file would not load)
    resume_and_compare(over, run_dir, reference, tmp_path / "resume.log")


@pytest.mark.parametrize(
    "workers", [pytest.param(0, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.faults)]
)
def test_disk_full_during_a_save(workers, data_root, reference, tmp_path):
    """A save that cannot be written (file size limit): named error, previous last.pt kept."""
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    over = overrides(data_root, workers)
    limit = {"fsize": f"{SPE + 2}:100000"}  # from step 6: smaller than a checkpoint
    proc = start(driver("train", *over, f"hydra.run.dir={run_dir}"), log, env(tmp_path, **limit))
    rc = wait_exit(proc, 300)
    output = log.read_text(errors="replace")
    assert rc == 1, output[-6000:]
    assert "cannot write checkpoint " + str(run_dir) in output, output[-6000:]
    assert load(run_dir / "last.pt")["step"] == SPE
    assert temporaries(run_dir) == []
    resume_and_compare(over, run_dir, reference, tmp_path / "resume.log")


@pytest.mark.parametrize(
    "workers", [pytest.param(0, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.faults)]
)
def test_training_file_truncated_mid_epoch(workers, data_root, reference, tmp_path):
    """The training HDF5 file cut short in epoch 2: the error names file and row, last.pt kept."""
    copy = tmp_path / "data" / "train.h5"
    copy.parent.mkdir()
    shutil.copy(data_root / "train.h5", copy)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    over = overrides(data_root, workers, f"data.train_files=[{copy}]")
    cut = {"truncate": f"{SPE + 1}:{copy}"}
    proc = start(driver("train", *over, f"hydra.run.dir={run_dir}"), log, env(tmp_path, **cut))
    rc = wait_exit(proc, 300)
    output = log.read_text(errors="replace")
    assert rc == 1, output[-6000:]
    assert f"DataReadError: {copy}: cannot read row " in output, output[-6000:]
    if workers:
        assert "in DataLoader worker process" in output  # raised in a worker, reported here
    # workers may have read epoch 2 before the cut; epoch 3's then fail to open the file
    assert load(run_dir / "last.pt")["step"] in ((SPE,) if workers == 0 else (SPE, 2 * SPE))
    shutil.copy(data_root / "train.h5", copy)
    resume_and_compare(over, run_dir, reference, tmp_path / "resume.log")


@pytest.mark.faults
def test_torchrun_launcher_sigterm(data_root, tmp_path):
    """SIGTERM to torchrun (2 gloo ranks, a loader worker each): all end, exact resume."""
    over = overrides(data_root, 1, batch=1)
    ref_dir, run_dir, fault_dir = tmp_path / "ref", tmp_path / "run", tmp_path / "fault"
    fault_dir.mkdir()
    run_to_end(torchrun("train.py", *over, f"hydra.run.dir={ref_dir}"), tmp_path / "r.log", env())
    log = tmp_path / "run.log"
    cmd = torchrun(str(driver("train")[1]), "train", *over, f"hydra.run.dir={run_dir}")
    proc = start(cmd, log, env(fault_dir, pause=f"step:{SPE + 2}"))
    wait_paused(proc, fault_dir, log)
    # both ranks get SIGTERM from torchrun before they leave the pause
    out = stop(proc, log, [signal.SIGTERM], False, fault_dir, ("SIGTERM: stopping after", 2))
    TIMES.append(("torchrun-TERM-launcher-w1", out.rc, out.exit_s))
    assert out.rc is not None and out.exit_s < BAR_S, out.output[-6000:]
    assert out.rc != 0  # torchrun reports the signal (see README)
    assert not out.left, f"ranks or workers {out.left} outlived torchrun"
    assert out.output.count(f"SIGTERM: saved step {SPE + 2}") == 1  # rank 0 saves for all
    assert load(run_dir / "last.pt")["step"] == SPE + 2
    run_to_end(torchrun("train.py", *over, f"hydra.run.dir={run_dir}"), tmp_path / "e.log", env())
    assert_same_final_state(run_dir, ref_dir)


@pytest.mark.faults
def test_demo_sigterm_to_the_group(data_root, tmp_path):
    """dcls-audio-demo stopped in training: exits 143, no worker left; run again, it resumes."""
    over = [
        "data=synthetic", "trainer.batch_size=2", "trainer.global_batch_size=2",
        "optim.lr_ref_batch=2", "trainer.epochs=2", "trainer.eval_every=1", "trainer.log_every=1",
        "trainer.max_eval_samples=4", "model.timm_kwargs.dims=[8,16,32,64]",
        "model.timm_kwargs.depths=[1,1,1,1]", "conv.dilated_kernel_size=5",
    ]  # fmt: skip
    ref_dir = tmp_path / "reference"
    ref_cmd = ["experiment=demo", "conv=dcls_gauss", f"data.root={data_root}", "seed=0", *over]
    run_to_end(train_py(ref_cmd, ref_dir), tmp_path / "reference.log", env())
    args = ["--convs", "dcls_gauss", "--out", str(tmp_path / "demo"), "--data", str(data_root)]
    fault_dir, log = tmp_path / "fault", tmp_path / "demo.log"
    fault_dir.mkdir()
    proc = start(driver("demo", *args, *over), log, env(fault_dir, pause=f"step:{SPE + 1}"))
    wait_paused(proc, fault_dir, log)
    out = stop(proc, log, [signal.SIGTERM], group=True, fault_dir=fault_dir)
    check_exit(out, "demo-TERM-step-group-w1", 143)
    run_dir = tmp_path / "demo" / "dcls_gauss"
    assert load(run_dir / "last.pt")["step"] == SPE + 1
    demo = [str(BIN / "dcls-audio-demo"), *args, *over]
    output = run_to_end(demo, tmp_path / "again.log", env())
    assert f"resuming from {run_dir / 'last.pt'}" in output
    assert_same_final_state(run_dir, ref_dir)


@pytest.mark.parametrize(
    ("name", "target", "workers"),
    [
        pytest.param("TERM", "group", 2, marks=pytest.mark.slow),
        pytest.param("INT", "pid", 0, marks=pytest.mark.faults),
        pytest.param("USR2", "group", 1, marks=pytest.mark.faults),
    ],
)
def test_evaluate_command_stops(name, target, workers, data_root, reference, tmp_path):
    """dcls-audio-evaluate stopped while reading: exits 128 + signum at once, workers too."""
    args = ["--checkpoint", str(reference / "last.pt"), "--eval-files", str(data_root / "eval.h5")]
    args += ["--batch-size", "1", "--num-workers", str(workers), "--device", "cpu", "--no-progress"]
    fault_dir, log = tmp_path / "fault", tmp_path / "eval.log"
    fault_dir.mkdir()
    proc = start(driver("evaluate", *args), log, env(fault_dir, pause="item:0"))
    wait_paused(proc, fault_dir, log)
    out = stop(proc, log, SIGNALS[name], target == "group", fault_dir)
    check_exit(out, f"evaluate-{name}-{target}-w{workers}", STATUS[name])
    assert f"dcls-audio-evaluate: stopped by SIG{name}" in out.output
    again = run_to_end([str(BIN / "dcls-audio-evaluate"), *args], tmp_path / "again.log", env())
    assert "on 5 clips: mAP" in again


def test_failed_checkpoint_write_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch):
    """A write that fails half way (disk full): CheckpointError naming the file; file intact."""
    import errno

    import torch

    from dcls_audio.train import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.atomic_torch_save({"step": torch.tensor(1)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def disk_full(obj, f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(
        checkpoint.CheckpointError, match=rf"cannot write checkpoint {path} .*No space"
    ):
        checkpoint.atomic_torch_save({"step": torch.tensor(2)}, path)
    assert path.read_bytes() == before and temporaries(tmp_path) == []
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    checkpoint.atomic_torch_save({"step": torch.tensor(3)}, path)  # the next save works
    assert int(load(path)["step"]) == 3


def test_a_run_start_removes_the_temporary_files_of_killed_saves(tmp_path):
    from dcls_audio.train.checkpoint import prepare_run_dir

    names = [".last.pt.abc123.tmp", ".best.pt.x.tmp", ".results.json.y.tmp"]
    for name in [*names, ".other.tmp", "last.pt"]:
        (tmp_path / name).write_bytes(b"partial")
    assert prepare_run_dir(tmp_path) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp", "last.pt"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_file_is_an_error_naming_file_and_row(workers, synthetic_root, tmp_path):
    """HDF5 reads past a truncated file's end as zeros; the dataset notices and names the row."""
    from torch.utils.data import DataLoader

    from dcls_audio.data.hdf5 import AudioSetHDF5, DataReadError
    from dcls_audio.train.preempt import batches
    from dcls_audio.workers import loader_worker_init

    copy = tmp_path / "train.h5"
    shutil.copy(synthetic_root(8) / "train.h5", copy)
    data = AudioSetHDF5(copy, num_classes=16)
    data.read_raw(7)  # the file is open
    size = copy.stat().st_size
    with open(copy, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataReadError, match=rf"{copy}: cannot read row 7 of 'waveform'.* bytes"):
        data.read_raw(7)
    loader = DataLoader(data, 2, num_workers=workers, worker_init_fn=loader_worker_init)
    with pytest.raises(DataReadError, match=rf"{copy}: cannot read row \d+"):
        with batches(loader) as it:
            list(it)


def test_stop_signal_records_once_and_a_second_sigint_stops_at_once():
    import os

    import torch

    from dcls_audio.train.preempt import Preempted, StopSignal

    stop = StopSignal(torch.device("cpu"))
    before = signal.getsignal(signal.SIGINT)
    with stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: a stop is already under way
        assert stop.pending() and stop.requested() and stop.name() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
    assert stop.interrupted and signal.getsignal(signal.SIGINT) is before
    stopped = stop.preempted("stopped")
    assert isinstance(stopped, Preempted) and stopped.code == 130 and str(stopped) == "stopped"
    stop.forward()  # Python's own SIGINT handler is not called: no KeyboardInterrupt

"""End to end on a real SLURM: a 2-seed sweep through hydra-submitit-launcher, timeouts, preemption.

These tests submit jobs with ``python train.py -m ... hydra/launcher=slurm`` to the cluster that
``SLURM_CONF`` names. ``make test-slurm`` (tests/slurm/run.sh) installs SLURM when it is missing,
starts a two-node cluster on this host (tests/slurm/cluster.sh: partition ``debug`` holds node
``localhost``, partition ``multi`` holds it and a second node with its own slurmd), runs them and
tears the cluster down. They are marked ``slurm`` and left out of ``make test``; without a
reachable cluster they are skipped (or fail, when ``DCLS_SLURM_REQUIRED=1``, as run.sh sets).

The runs are the CPU demo (``experiment=demo``) on a 32-clip synthetic set: 4 epochs of 8
optimizer steps (batch 4), one evaluation of 16 clips; under a minute each on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS_PER_EPOCH = 8  # 32 clips / batch 4
EPOCHS = 4  # long enough that a third stop, 2 steps after the second resume, lands in training
SWEEP_LIMIT_S = 240  # the 2-seed sweep (two array tasks side by side on two cores)
STOPPED_RUN_LIMIT_S = 360  # one run stopped three times, with three requeues
STOPS = 3

# The tiny training config: the CPU demo, 4 epochs of 8 steps of 4 clips, a progress line and
# a "train" record in metrics.jsonl after every optimizer step.
TINY = (
    "experiment=demo",
    "data=synthetic",
    f"trainer.epochs={EPOCHS}",
    "trainer.batch_size=4",
    "trainer.global_batch_size=4",
    "trainer.log_every=1",
    "trainer.eval_every=0",  # one evaluation, after the last epoch
)


def launcher(partition: str, sweep_dir: Path, name: str) -> list[str]:
    """hydra/launcher=slurm for a CPU-only localhost cluster: one task, no GPU request."""
    return [
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={partition}",
        "hydra.launcher.nodes=1",
        "hydra.launcher.tasks_per_node=1",
        "hydra.launcher.gpus_per_node=null",  # slurm.yaml: ${tasks_per_node}; no gres here
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=5",
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def slurm(*args: str, check: bool = True) -> str:
    """Output of a SLURM client command (SLURM_CONF from the environment)."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def records(path: Path, kind: str | None = None) -> list[dict]:
    """The JSONL records of a run's metrics.jsonl (of one ``type``), [] before it exists."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if kind is None or rec.get("type") == kind:
            out.append(rec)
    return out


def wait_for(what: str, check, limit_s: float, proc: subprocess.Popen | None = None, poll=0.5):
    """Poll ``check()`` until it returns a truthy value; fail naming ``what`` after limit_s."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            value = check()  # the last state before the sweep process ended
            if value:
                return value
            tail = "\n".join(proc.log.read_text().strip().splitlines()[-3:])
            pytest.fail(
                f"the sweep process exited ({proc.returncode}) while waiting for {what}; "
                f"its last lines:\n{tail}"
            )
        time.sleep(poll)
    pytest.fail(f"timed out after {limit_s:.0f} s waiting for {what}")


def submitit_logs(sweep_dir: Path) -> str:
    """All of submitit's job logs of a sweep (stdout and stderr of every job and requeue)."""
    parts = []
    for f in sorted((sweep_dir / ".submitit").glob("*/*_log.*")):
        parts.append(f"===== {f.relative_to(sweep_dir)}\n{f.read_text(errors='replace')}")
    return "\n".join(parts)


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict saved in a training checkpoint."""
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="session")
def partition() -> str:
    """The test cluster's partition; skip (or fail under DCLS_SLURM_REQUIRED=1) without one."""
    required = os.environ.get("DCLS_SLURM_REQUIRED") == "1"
    why = ""
    if not shutil.which("sinfo"):
        why = "no SLURM client commands (sinfo)"
    else:
        done = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True)
        if done.returncode:
            why = f"sinfo failed: {done.stderr.strip()}"
        elif "idle" not in done.stdout and "mix" not in done.stdout:
            why = f"no idle node: {done.stdout.strip()}"
    if why:
        message = f"{why}; run `make test-slurm` (starts a localhost cluster)"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    name = os.environ.get("SLURM_TEST_PARTITION")
    if not name:
        name = slurm("sinfo", "-h", "-o", "%P").split()[0].rstrip("*")
    return name


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """Directory of the sweeps (kept by run.sh when a test fails)."""
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="session")
def data_root(work) -> Path:
    """The 32 + 16 clip synthetic set, written by the command a user would run."""
    root = work / "data"
    subprocess.run(
        [str(BIN / "dcls-audio-synthetic"), "--out", str(root), "--train", "32", "--eval", "16"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return root


def start_sweep(seeds, data_root, sweep_dir, *extra, partition: str, name: str, log: Path):
    """``python train.py -m experiment=demo seed=SEEDS hydra/launcher=slurm ...`` (Popen)."""
    cmd = [
        sys.executable, "train.py", "-m", f"seed={seeds}", *TINY, f"data.root={data_root}",
        *launcher(partition, sweep_dir, name), *extra,
    ]  # fmt: skip
    env = dict(os.environ, HYDRA_FULL_ERROR="1", WANDB_MODE="disabled")
    out = log.open("w")
    out.write("$ " + " ".join(cmd) + "\n")
    out.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, limit_s: float) -> int:
    """Wait for a sweep process; kill it (and fail) past limit_s."""
    try:
        return proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(
            f"the sweep process ran past {limit_s:.0f} s; its output:\n{proc.log.read_text()}"
        )


@pytest.fixture(scope="session")
def sweep(partition, data_root, work):
    """The 2-seed sweep, run once: (return code, sweep dir, wall seconds, launcher output)."""
    sweep_dir = work / "sweep"
    start = time.monotonic()
    proc = start_sweep(
        "0,1", data_root, sweep_dir, partition=partition, name="dcls-sweep", log=work / "sweep.out"
    )
    rc = finish(proc, SWEEP_LIMIT_S)
    return rc, sweep_dir, time.monotonic() - start, proc.log.read_text()


def run_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories of a sweep (one per multirun point)."""
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_two_seed_sweep_runs_as_an_array_and_aggregates(sweep):
    rc, sweep_dir, wall, output = sweep
    logs = submitit_logs(sweep_dir)
    assert rc == 0, f"sweep exited {rc}:\n{output}\n{logs}"
    runs = run_dirs(sweep_dir)
    assert len(runs) == 2, f"expected two run directories in {sweep_dir}: {runs}"
    for run in runs:
        assert (run / "results.json").exists(), f"{run} has no results.json:\n{logs}"
    # One SLURM job array with tasks 0 and 1 (submitit folders are named <array id>_<task>).
    jobs = sorted(p.name for p in (sweep_dir / ".submitit").glob("*_*") if p.is_dir())
    assert len(jobs) == 2 and {j.split("_")[1] for j in jobs} == {"0", "1"}, jobs
    assert len({j.split("_")[0] for j in jobs}) == 1, f"not one array job: {jobs}"
    seeds = sorted(json.loads((r / "results.json").read_text())["seed"] for r in runs)
    assert seeds == [0, 1]

    done = subprocess.run(
        [str(BIN / "dcls-audio-aggregate"), str(sweep_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [ln for ln in done.stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows[2:]]
    assert len(body) == 1, f"expected one aggregated row:\n{done.stdout}"
    runs_col = next(i for i, h in enumerate(header) if "seeds" in h)
    assert body[0][runs_col].replace(" ", "") == "2(0,1)", done.stdout
    print(f"\n2-seed sweep: {wall:.0f} s wall\n{done.stdout}")


def test_progress_lines_reach_the_run_directory_log(sweep):
    """The per-step progress lines are in the run directory, not only in submitit's stdout."""
    rc, sweep_dir, _, _ = sweep
    run = run_dirs(sweep_dir)[0]
    logs = {p.name: p.read_text(errors="replace") for p in run.glob("*.log")}
    progress = {n: len(re.findall(r"step\s+\d+/\d+", t)) for n, t in logs.items()}
    total = EPOCHS * STEPS_PER_EPOCH
    assert any(n >= total for n in progress.values()), (
        f"progress lines (one per step, {total}) per log file of {run}: {progress}; "
        f"train.log holds:\n{logs.get('train.log', '(none)')}"
    )


# Stop cases: (extra overrides of the run, whether the sweep's seed-0 run is its reference
# (same config) rather than an uninterrupted run launched beside it, how the run is stopped).
# "timeout": SIGUSR2 to the job's steps (`scancel --signal=USR2`), as SLURM's pre-timeout
# signal (`#SBATCH --signal=USR2@...`, set by submitit) does; submitit's handler requeues.
# "preempt": `scontrol requeue`, as a preemption with PreemptMode=REQUEUE: SLURM sends SIGTERM
# to every process of the job and requeues it itself (no SIGUSR2, submitit is not asked).
# "ddp2" is one SLURM job of two tasks: two gloo DDP ranks on the CPU, 2 clips per rank.
DDP2 = ("trainer.device=cpu", "trainer.batch_size=2", "hydra.launcher.tasks_per_node=2")
CASES = {
    "uniform": ((), True, "timeout"),
    "balanced": (("data.balanced_sampling=true",), False, "timeout"),
    "ddp2": (DDP2, False, "timeout"),
    "preempt": ((), True, "preempt"),
}


def squeue_state(job: str) -> str:
    """SLURM state of a job ("" once it has left the queue)."""
    return slurm("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()


def force_stops(proc, tdir: Path, name: str, how: str, report: dict, stops: int = STOPS) -> None:
    """Stop the run ``stops`` times inside training (see CASES for ``how``).

    After each stop, wait for the requeue, release the requeued job at once (SLURM holds it for
    about two minutes, reason BeginTime) and wait for the run's resume record.
    """
    job = wait_for(
        "the job to be submitted",
        lambda: slurm("squeue", "-h", "--name", name, "-o", "%i").split(), 60, proc,
    )[0]  # fmt: skip
    report["job"] = job
    metrics = wait_for(
        "the run to start (metrics.jsonl)", lambda: list(tdir.glob("*/metrics.jsonl")), 240, proc
    )[0]
    for k in range(1, stops + 1):
        # Two more optimizer steps than at the last (re)start: inside epoch 1 or 2.
        seen = len(records(metrics, "train"))
        wait_for(
            f"2 training steps before stop {k}",
            lambda seen=seen: len(records(metrics, "train")) >= seen + 2, 120, proc, poll=0.2,
        )  # fmt: skip
        at = records(metrics, "train")[-1]["step"]
        if how == "timeout":
            slurm("scancel", "--signal=USR2", job)
        else:
            slurm("scontrol", "requeue", job)
        t_signal = time.monotonic()
        state = wait_for(
            f"the job to be requeued after stop {k}",
            lambda: (s := squeue_state(job)) not in ("RUNNING", "COMPLETING") and (s or "GONE"),
            90, proc, poll=0.2,
        )  # fmt: skip
        if state == "GONE":
            pytest.fail(f"after stop {k} the job left the queue instead of being requeued")
        slurm("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
        resume = wait_for(
            f"resume {k} (a 'resume' record in {metrics})",
            lambda k=k: (r := records(metrics, "resume")) and len(r) >= k and r[k - 1],
            180, proc,
        )  # fmt: skip
        # The last step logged before the resume (the trainer may finish the running step).
        before = [r for r in records(metrics, "train") if r["time"] < resume["time"]]
        report["stops"].append({
            "signalled_at_step": at, "last_logged_step": max(r["step"] for r in before),
            "resumed_at_step": resume["step"], "resumed_epoch": resume.get("epoch"),
            "signal_to_resume_s": round(time.monotonic() - t_signal, 1),
        })  # fmt: skip


def write_report(report: dict, tdir: Path, base: Path, start: float) -> str:
    """Complete a stopped run's report from its logs and SLURM, write and print it; the logs."""
    logs = submitit_logs(tdir)
    report["wall_s"] = round(time.monotonic() - start, 1)
    report["temporary_file_race"] = "A temporary saved file already exists" in logs
    report["not_requeued"] = re.findall(r"Job not requeued because: [^\n]*", logs)
    # submitit logs each line to the job's stdout and stderr: count distinct messages
    report["requeued"] = sorted(
        set(re.findall(r"Requeued job \d+ \(\d+ remaining timeouts\)", logs))
    )
    show = slurm("scontrol", "show", "job", report.get("job", "0"), check=False)
    report["restarts"] = re.findall(r"Restarts=(\d+)", show)
    base.mkdir(parents=True, exist_ok=True)
    (base / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\nstops ({report['case']}, {report['how']}):", json.dumps(report))
    return logs


@pytest.mark.parametrize("case", list(CASES))
def test_three_stops_requeue_and_resume_to_the_same_weights(
    case, sweep, partition, data_root, work
):
    """Three forced timeouts (or preemptions) in a row on one run: requeue, exact resume.

    After each stop the job is requeued (by submitit on SIGUSR2, by SLURM on a preemption),
    starts again in the same run directory and resumes from last.pt at the step it had
    reached; the sweep process waits for it and exits 0, and the final last.pt holds the model
    tensors of an uninterrupted run of the same config.
    """
    extra, sweep_is_reference, how = CASES[case]
    rc, sweep_dir, _, _ = sweep
    assert rc == 0, "the 2-seed sweep failed"
    base = work / f"stops_{case}"
    start = time.monotonic()
    ref_proc = None
    if sweep_is_reference:
        reference = run_dirs(sweep_dir)[0]
        assert reference.name.endswith("_s0"), reference
    else:  # an uninterrupted run of the same config, submitted first
        ref_proc = start_sweep(
            "0", data_root, base / "reference", *extra, partition=partition,
            name=f"dcls-ref-{case}", log=base.with_suffix(".reference.out"),
        )  # fmt: skip
        wait_for(
            "the reference job to start",
            lambda: "RUNNING" in slurm("squeue", "-h", "--name", f"dcls-ref-{case}", "-o", "%T"),
            60, ref_proc,
        )  # fmt: skip
    tdir, name = base / "stopped", f"dcls-stops-{case}"
    proc = start_sweep(
        "0", data_root, tdir, *extra, f"hydra.launcher.max_num_timeout={STOPS + 1}",
        partition=partition, name=name, log=base.with_suffix(".out"),
    )  # fmt: skip
    report: dict = {"case": case, "how": how, "stops": []}
    try:
        force_stops(proc, tdir, name, how, report)
        rc_t = finish(proc, max(30.0, STOPPED_RUN_LIMIT_S - (time.monotonic() - start)))
        if ref_proc is not None:
            assert finish(ref_proc, 120) == 0, ref_proc.log.read_text()
            reference = run_dirs(base / "reference")[0]
    finally:
        for p in (proc, ref_proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        logs = write_report(report, tdir, base, start)

    output = proc.log.read_text()
    assert rc_t == 0, f"the sweep process exited {rc_t}:\n{output}\n{logs}"
    run = run_dirs(tdir)[0]
    assert (run / "results.json").exists(), f"no results.json in {run}:\n{logs}"
    assert not report["temporary_file_race"], logs
    if how == "timeout":
        assert len(report["requeued"]) == STOPS, f"submitit requeued {report['requeued']}"
    assert report["restarts"] == [str(STOPS)], f"SLURM restarts: {report['restarts']}"
    lost = [s for s in report["stops"] if s["resumed_at_step"] != s["last_logged_step"]]
    assert not lost, f"resumed before the step the run had reached: {report['stops']}"
    inside = [s for s in report["stops"] if s["resumed_at_step"] % STEPS_PER_EPOCH]
    assert inside, f"no resume inside an epoch; the test missed its point: {report['stops']}"
    mine, ref = model_tensors(run / "last.pt"), model_tensors(reference / "last.pt")
    assert mine.keys() == ref.keys()
    differ = [k for k in ref if not torch.equal(mine[k], ref[k])]
    assert not differ, f"{len(differ)} of {len(ref)} model tensors differ, e.g. {differ[:5]}"


# The two-node job: `hydra.launcher.nodes=2` with one task per node, in the partition of two
# nodes (two slurmd on this host, tests/slurm/cluster.sh): one gloo DDP rank on each node, 2 clips
# per rank as in "ddp2". The rendezvous address is the first node's name (SLURM_JOB_NODELIST).
TWO_NODES = ("trainer.device=cpu", "trainer.batch_size=2", "hydra.launcher.nodes=2")
TWO_NODE_STOPS = 1


@pytest.fixture(scope="session")
def two_nodes(partition) -> tuple[str, list[str]]:
    """The test cluster's partition of two nodes and its node names; skip or fail without one."""
    name = os.environ.get("SLURM_TEST_MULTI_PARTITION", "multi")
    out = ",".join(slurm("sinfo", "-h", "-p", name, "-o", "%N", check=False).split())
    nodes = slurm("scontrol", "show", "hostnames", out, check=False).split() if out else []
    if len(nodes) < 2:
        message = (
            f"no partition {name!r} of two nodes (sinfo: {out or 'none'}); run `make test-slurm` "
            "(starts a two-node cluster) or set SLURM_TEST_MULTI_PARTITION"
        )
        if os.environ.get("DCLS_SLURM_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return name, nodes


def job_fields(job: str) -> dict[str, str]:
    """``scontrol show job`` of a job as a dict (NodeList, NumNodes, Restarts, ...)."""
    text = slurm("scontrol", "show", "job", "--oneliner", job)
    return dict(f.split("=", 1) for f in text.split() if "=" in f)


def task_starts(tdir: Path, job: str) -> dict[int, list[str]]:
    """Per task (global rank) of a job, submitit's "Starting with JobEnvironment(...)" lines.

    submitit logs the line (INFO: to stdout only) into each task's own ``<job>_<task>_log.out``
    at every start of the job, the first and each requeue.
    """
    starts = {}
    for f in sorted((tdir / ".submitit" / job).glob(f"{job}_*_log.out")):
        text = f.read_text(errors="replace")
        starts[int(f.name.split("_")[1])] = re.findall(r"Starting with (JobEnv.*\))", text)
    return starts


def step_launches(node: str, job: str) -> int:
    """How many times node ``node``'s slurmd launched step 0 of ``job`` (its log, on this host)."""
    conf = slurm("scontrol", "show", "config")
    path = re.search(r"^SlurmdLogFile\s*=\s*(\S+)", conf, re.M)
    log = Path(path.group(1).replace("%n", node).replace("%h", node)) if path else None
    if log is None or not log.exists():
        pytest.fail(f"no slurmd log of node {node} ({log}) in:\n{conf}")
    return len(re.findall(rf"launch task StepId={job}\.0 ", log.read_text(errors="replace")))


def test_two_node_job_trains_and_resumes_on_both_nodes(two_nodes, data_root, work):
    """One DDP job across two SLURM nodes: stopped at a time limit, requeued, resumed, exact.

    The job (one rank per node) gets SLURM's pre-timeout signal inside its first epoch, saves,
    is requeued by submitit and starts again on both nodes: each rank starts twice on its own
    node, and the run resumes at the step it had reached. It ends with world size 2, each
    evaluation clip counted once, and the model tensors of an uninterrupted two-node run of the
    same config, launched beside it (one rank per node as well: each node has two CPUs).
    """
    part, nodes = two_nodes
    base, start = work / "two_nodes", time.monotonic()
    ref_name, name = "dcls-ref-two-nodes", "dcls-stops-two-nodes"
    ref_proc = start_sweep(
        "0", data_root, base / "reference", *TWO_NODES, partition=part, name=ref_name,
        log=base.with_suffix(".reference.out"),
    )  # fmt: skip
    wait_for(
        "the reference job to start",
        lambda: "RUNNING" in slurm("squeue", "-h", "--name", ref_name, "-o", "%T"), 60, ref_proc,
    )  # fmt: skip
    tdir = base / "stopped"
    proc = start_sweep(
        "0", data_root, tdir, *TWO_NODES, f"hydra.launcher.max_num_timeout={TWO_NODE_STOPS + 1}",
        partition=part, name=name, log=base.with_suffix(".out"),
    )  # fmt: skip
    report: dict = {"case": "two_nodes", "how": "timeout", "stops": []}
    try:
        force_stops(proc, tdir, name, "timeout", report, stops=TWO_NODE_STOPS)
        resumed = job_fields(report["job"])  # the requeued job, running again
        report["node_list"], report["num_nodes"] = resumed["NodeList"], resumed["NumNodes"]
        rc_t = finish(proc, max(30.0, STOPPED_RUN_LIMIT_S - (time.monotonic() - start)))
        assert finish(ref_proc, 120) == 0, ref_proc.log.read_text()
    finally:
        for p in (proc, ref_proc):
            if p.poll() is None:
                p.kill()
                p.wait()
        logs = write_report(report, tdir, base, start)

    assert rc_t == 0, f"the sweep process exited {rc_t}:\n{proc.log.read_text()}\n{logs}"
    job = report["job"]
    listed = slurm("scontrol", "show", "hostnames", report["node_list"]).split()
    assert report["num_nodes"] == "2" and sorted(listed) == sorted(nodes), report
    starts = task_starts(tdir, job)
    assert sorted(starts) == [0, 1], f"task logs of job {job}: {sorted(starts)}\n{logs}"
    for rank, lines in starts.items():
        where = f"node={rank}(2), global_rank={rank}(2)"
        assert len(lines) == 1 + TWO_NODE_STOPS and all(where in x for x in lines), (rank, lines)
    launches = {node: step_launches(node, job) for node in nodes}
    assert launches == dict.fromkeys(nodes, 1 + TWO_NODE_STOPS), f"step launches: {launches}"
    assert len(report["requeued"]) == TWO_NODE_STOPS, f"submitit requeued {report['requeued']}"
    assert report["restarts"] == [str(TWO_NODE_STOPS)], f"SLURM restarts: {report['restarts']}"
    lost = [s for s in report["stops"] if s["resumed_at_step"] != s["last_logged_step"]]
    assert not lost, f"resumed before the step the run had reached: {report['stops']}"
    inside = [s for s in report["stops"] if s["resumed_at_step"] % STEPS_PER_EPOCH]
    assert inside, f"no resume inside an epoch; the test missed its point: {report['stops']}"

    run, reference = run_dirs(tdir)[0], run_dirs(base / "reference")[0]
    for r in (run, reference):
        results = json.loads((r / "results.json").read_text())
        assert results["world_size"] == 2, f"{r}: world size {results['world_size']}"
        assert results["num_eval_clips"] == 16, results["num_eval_clips"]  # each clip once
    mine, ref = model_tensors(run / "last.pt"), model_tensors(reference / "last.pt")
    assert mine.keys() == ref.keys()
    differ = [k for k in ref if not torch.equal(mine[k], ref[k])]
    assert not differ, f"{len(differ)} of {len(ref)} model tensors differ, e.g. {differ[:5]}"

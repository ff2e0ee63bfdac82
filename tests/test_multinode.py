"""A two-node torchrun job on the loopback: two launchers (``--nnodes 2``), c10d rendezvous.

Each launcher stands for one machine with one process; they meet at a c10d rendezvous on
127.0.0.1 and train one tiny run together. It must end as a standalone 2-process torchrun of
the same config does: world size 2, every clip evaluated once, the same final weights.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_overrides

LIMIT_S = 600  # each launch; a tiny run takes well under a minute on two cores
GRACE_S = 30  # how long a launcher may outlive a failed peer


def overrides(data_root: Path) -> list[str]:
    """A tiny 2-rank CPU run: 8 clips, 2 per rank per step, 2 epochs of 2 optimizer steps."""
    return tiny_overrides(
        data_root,
        "trainer.batch_size=2",
        "trainer.global_batch_size=4",
        "trainer.epochs=2",
        "trainer.warmup_epochs=0",
        "optim.lr_ref_batch=4",
    )


@pytest.fixture(scope="module")
def data_root(synthetic_root) -> Path:
    """8 training clips and 5 evaluation clips."""
    return synthetic_root(8)


def environment() -> dict[str, str]:
    """The caller's environment without rank or scheduler variables; one BLAS thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"):
        env.pop(var, None)
    return {k: v for k, v in env.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(node: int, endpoint: str, run_id: str, *args: str) -> list[str]:
    """torchrun for node ``node`` of 2 (one process), c10d rendezvous at ``endpoint``.

    Node 0 hosts the rendezvous store; every address is the loopback's.
    """
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
        "--rdzv-id", run_id, "--rdzv-conf", f"is_host={int(node == 0)}",
        "--local-addr", "127.0.0.1", "--max-restarts", "0", "train.py", *args,
    ]  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in the repository root in its own session, output into ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=environment(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def wait_all(procs: list[subprocess.Popen], logs: list[Path]) -> list[int]:
    """Exit statuses of ``procs``; a launcher left waiting for a failed one is ended.

    Past LIMIT_S every process group is killed and the test fails.
    """
    end, failed_at = time.monotonic() + LIMIT_S, None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if failed_at is None and any(p.returncode for p in procs):
            failed_at = now  # the other launcher would wait for its peer until its timeout
        if now > end or (failed_at is not None and now > failed_at + GRACE_S):
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            if now > end:
                tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs)
                pytest.fail(f"a launcher ran past {LIMIT_S} s:\n{tails}")
        time.sleep(0.2)
    return [p.returncode for p in procs]


@pytest.mark.slow
def test_two_launchers_train_one_run_as_a_standalone_two_process_run(data_root, tmp_path):
    """Two ``torchrun --nnodes 2`` launchers end as one ``--standalone --nproc-per-node 2``."""
    over = overrides(data_root)
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"dcls-{uuid.uuid4().hex[:8]}"
    two_dir, ref_dir = tmp_path / "two_nodes", tmp_path / "standalone"
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    nodes = [start(launcher(n, endpoint, run_id, *over, f"hydra.run.dir={two_dir}"), logs[n])
             for n in (0, 1)]  # fmt: skip
    codes = wait_all(nodes, logs)
    outputs = [log.read_text() for log in logs]
    failed = [f"--- node {n} exited {c}:\n{outputs[n][-4000:]}" for n, c in enumerate(codes) if c]
    assert not failed, "\n".join(failed)

    # One rank writes; it is on either launcher (the rendezvous assigns the ranks).
    writers = [o for o in outputs if "results written" in o]
    assert len(writers) == 1 and writers[0].count("results written") == 1, outputs
    assert "world 2 on cpu | batch 2 x 2 x 1 accumulation = 4" in writers[0], writers[0]
    two = json.loads((two_dir / "results.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == 4, two
    assert two["num_eval_clips"] == 5  # 3 + 2 clips, each counted once

    ref_log = tmp_path / "standalone.log"
    ref_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "train.py", *over, f"hydra.run.dir={ref_dir}"]  # fmt: skip
    (code,) = wait_all([start(ref_cmd, ref_log)], [ref_log])
    assert code == 0, ref_log.read_text()[-4000:]
    ref = json.loads((ref_dir / "results.json").read_text())
    assert ref["world_size"] == 2 and ref["steps"] == 4

    a = torch.load(two_dir / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(ref_dir / "last.pt", map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    differ = [k for k, v in b["model"].items() if not torch.equal(a["model"][k], v)]
    assert not differ, f"{len(differ)} of {len(b['model'])} model tensors differ: {differ[:5]}"
    assert len(a["rng"]) == 2  # both ranks' RNG states are kept
    assert two["map"] == ref["map"] and two["mauc"] == ref["mauc"]

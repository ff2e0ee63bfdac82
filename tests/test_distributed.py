"""Two-process gloo DDP through torchrun and train.py, against the single-process run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_overrides

from dcls_audio.config import compose_config
from dcls_audio.datasets.synthetic import make_synthetic
from dcls_audio.train import run
from dcls_audio.train.distributed import DistEnv, first_slurm_host, pick_device, resolve_env


def overrides(data_root):
    # No mixup, erasing or drop path: per-rank random draws would differ from one process.
    return tiny_overrides(
        data_root,
        "augment=none",
        "model.drop_path_rate=0",
        "trainer.batch_size=1",
        "trainer.global_batch_size=4",
        "trainer.epochs=1",
        "trainer.warmup_epochs=0",
        "optim.lr_ref_batch=4",
    )


@pytest.fixture(scope="module")
def data_root(synthetic_root):
    return synthetic_root(4)


def torchrun(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 train.py ARGS`` on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(data_root, tmp_path):
    """World 2 x batch 1 x 2 accumulation (no_sync) == one process x batch 1 x 4 accumulation."""
    ddp_dir = tmp_path / "ddp"
    proc = torchrun(*overrides(data_root), f"hydra.run.dir={ddp_dir}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "world 2 on cpu | batch 1 x 2 x 2 accumulation = 4" in proc.stdout
    assert proc.stdout.count("results written") == 1  # only rank 0 writes

    ddp = json.loads((ddp_dir / "results.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == 1
    assert ddp["num_eval_clips"] == 5  # 3 + 2 clips, each counted once
    for key in ("map", "mauc", "dprime", "per_class_ap", "params", "config", "commit"):
        assert key in ddp

    single = run(compose_config(overrides(data_root)), run_dir=tmp_path / "single")

    a = torch.load(ddp_dir / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=1e-3, atol=1e-4)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):  # fmt: skip
        rel = (sa["exp_avg"] - sb["exp_avg"]).norm() / sb["exp_avg"].norm().clamp_min(1e-12)
        assert rel < 1e-3, rel  # gradients averaged over ranks and micro-steps, not summed
    assert len(a["rng"]) == 2  # every rank's RNG state is kept
    assert abs(ddp["mauc"] - single["mauc"]) < 1e-3


def test_torchrun_environment():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "node7",
           "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}  # fmt: skip
    assert resolve_env(env) == DistEnv(3, 1, 8, "node7", 1234)


def test_slurm_environment_is_translated():
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
           "SLURM_NODELIST": "gpu[012-015]", "SLURM_JOB_ID": "4242"}  # fmt: skip
    got = resolve_env(env)
    assert (got.rank, got.local_rank, got.world_size) == (5, 1, 8)
    assert got.master_addr == "gpu012" and got.master_port == 20000 + 4242
    assert not got.is_main and got.distributed
    env["MASTER_PORT"] = "29999"
    env["SLURM_JOB_NODELIST"] = "a1,a2"
    assert resolve_env(env).master_port == 29999 and resolve_env(env).master_addr == "a1"


def test_single_slurm_task_and_plain_process_are_not_distributed():
    assert resolve_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == DistEnv()
    assert resolve_env({}) == DistEnv()
    assert DistEnv().is_main and not DistEnv().distributed


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("node1", "node1"), ("gpu[003-005,010]", "gpu003"), ("gpu[7,9],cpu1", "gpu7"),
     ("a-b01,c", "a-b01"), ("x[10-11]-ib", "x10-ib")],
)  # fmt: skip
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_auto_device_falls_back_to_the_cpu_only_for_one_process(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", 0, 1) == torch.device("cpu")
    assert pick_device("cpu", 1, 2) == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"device=auto: CUDA is not available \(a 2-process"):
        pick_device("auto", 0, 2)
    with pytest.raises(RuntimeError, match=r"device=cuda:1: CUDA is not available \(requested"):
        pick_device("cuda:1", 0, 1)
    with pytest.raises(ValueError, match="trainer.device='tpu'"):
        pick_device("tpu")


@pytest.mark.slow
def test_torchrun_without_cuda_and_device_auto_exits_naming_the_device(data_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = torchrun(
        *tiny_overrides(data_root, "trainer.device=auto"), f"hydra.run.dir={tmp_path}", timeout=300
    )
    assert proc.returncode != 0
    assert "trainer.device=auto: CUDA is not available (a 2-process job" in proc.stderr
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.slow
def test_batchnorm_statistics_agree_across_ranks_before_evaluation_and_saving(tmp_path):
    """A 2-process evaluation of the final weights equals a 1-process one of the checkpoint."""
    from torch.utils.data import DataLoader

    from dcls_audio.data import AudioSetHDF5, LogMelFrontend
    from dcls_audio.models.checkpoint import load_model
    from dcls_audio.train.evaluate import ShardedEvalSampler, predict
    from dcls_audio.train.metrics import compute_metrics

    make_synthetic(tmp_path / "data", n_train=4, n_eval=24, seed=0)
    run_dir = tmp_path / "ddp"
    proc = torchrun(
        *tiny_overrides(tmp_path / "data", conv="dsc"),
        "model=fastvit_sa24", "model.timm_name=fastvit_t8", "model.drop_path_rate=0",
        "augment=none", "trainer.batch_size=1", "trainer.global_batch_size=2",
        "trainer.epochs=1", "trainer.warmup_epochs=0", "optim.lr_ref_batch=2",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads((run_dir / "results.json").read_text())
    assert ddp["world_size"] == 2 and ddp["device"]["backend"] == "gloo"

    model = load_model(run_dir / "last.pt").model
    assert any(type(m).__name__ == "BatchNorm2d" for m in model.modules())
    ds = AudioSetHDF5([tmp_path / "data" / "eval.h5"], 16)
    loader = DataLoader(ds, batch_size=4, sampler=ShardedEvalSampler(len(ds)))
    single = compute_metrics(*predict(model, LogMelFrontend(), loader, "cpu"))
    assert ddp["map"] == pytest.approx(single["map"], abs=1e-6)
    assert ddp["mauc"] == pytest.approx(single["mauc"], abs=1e-6)

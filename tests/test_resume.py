"""Resume: a run interrupted inside an epoch and restarted in its directory ends identical."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_cfg

from dcls_audio.train import run
from dcls_audio.train.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)


def make_cfg(data_root, *overrides, conv="dcls_gauss"):
    """The tiny run: batch 2, no accumulation."""
    base = ("trainer.batch_size=2", "trainer.global_batch_size=2", "optim.lr_ref_batch=2")
    return train_cfg(data_root, *base, *overrides, conv=conv)


@pytest.fixture(scope="module")
def data_root(synthetic_root):
    return synthetic_root(4)


class Killed(Exception):
    pass


def kill_at(step_to_die):
    def hook(step):
        if step == step_to_die:
            raise Killed(step)

    return hook


def results_without_timing(path):
    res = json.loads(Path(path).read_text())
    for k in ("wall_time_s", "train_samples_per_s", "commit"):
        res.pop(k)
    return res


def assert_same_training_state(run_a, run_b):
    """Bitwise-equal weights, EMA, optimizer moments and schedule in two runs' last.pt."""
    a = torch.load(run_a / "last.pt", weights_only=True)
    b = torch.load(run_b / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler"] == b["scheduler"]
    return a, b


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_weights_and_metrics(data_root, tmp_path):
    # 2 epochs x 2 optimizer steps of 2 clips, with mixup, erasing, drop path and EMA;
    # evaluated once, at the end.
    cfg = make_cfg(
        data_root,
        "trainer.epochs=2",
        "trainer.eval_every=2",
        "trainer.max_eval_samples=3",
        "trainer.warmup_epochs=1",
        "trainer.ema=true",
        "trainer.ema_decay=0.5",
        "model.drop_path_rate=0.2",
    )
    full = run(cfg, run_dir=tmp_path / "full")

    with pytest.raises(Killed):
        run(cfg, run_dir=tmp_path / "cut", on_step=kill_at(3))  # inside epoch 2
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert not (tmp_path / "cut" / "results.json").exists()

    # Scramble the process RNGs: the resumed run must not depend on them.
    torch.manual_seed(1234)
    random.seed(99)
    np.random.seed(7)
    resumed = run(cfg, run_dir=tmp_path / "cut")

    assert resumed["map"] == full["map"] and resumed["map_ema"] == full["map_ema"]
    a, b = assert_same_training_state(tmp_path / "full", tmp_path / "cut")
    assert a["step"] == b["step"] == 4

    ra = results_without_timing(tmp_path / "full" / "results.json")
    rb = results_without_timing(tmp_path / "cut" / "results.json")
    assert ra == rb
    for key in ("map_ema", "mauc_ema", "dprime_ema", "per_class_ap_ema"):
        assert key in ra
    # The EMA is a distinct average, not a copy of the raw weights.
    assert any(not torch.equal(v, a["model"][k]) for k, v in a["ema"].items())
    log = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert any(json.loads(x)["type"] == "resume" for x in log)


def test_corrupt_last_checkpoint_is_reported_not_ignored(data_root, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x80\x02garbage that is not a checkpoint")
    cfg = make_cfg(data_root, "trainer.max_steps=1")
    with pytest.raises(CheckpointError, match=r"(?s)last\.pt is unreadable.*delete/move"):
        run(cfg, run_dir=tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_truncated_checkpoint_is_reported(tmp_path):
    atomic_torch_save({"model": {"w": torch.randn(1000)}, "step": 3}, tmp_path / "last.pt")
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "last.pt")


def test_foreign_checkpoint_is_reported(tmp_path):
    atomic_torch_save({"model": {}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(tmp_path / "last.pt")


def test_resume_with_a_different_model_is_refused(data_root, tmp_path):
    cfg = make_cfg(data_root, "trainer.max_steps=1", "trainer.max_eval_samples=1")
    run(cfg, run_dir=tmp_path)
    other = make_cfg(data_root, "trainer.max_steps=1", conv="dsc")
    with pytest.raises(CheckpointError, match="different conv"):
        run(other, run_dir=tmp_path)


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "a.pt")
    atomic_torch_save({"x": torch.arange(4)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["x"], torch.arange(4))


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    atomic_torch_save({"rng": state}, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


@pytest.mark.parametrize(
    "change",
    ["trainer.epochs=3", "trainer.warmup_epochs=0", "optim.lr=0.5", "optim.lr_ref_batch=4"],
)
def test_resume_with_another_schedule_is_refused(data_root, tmp_path, change):
    cfg = make_cfg(data_root, "trainer.epochs=2", "trainer.warmup_epochs=1", "trainer.max_steps=2")
    run(cfg, run_dir=tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    other = make_cfg(
        data_root, "trainer.epochs=2", "trainer.warmup_epochs=1", "trainer.max_steps=2", change
    )
    key = change.split("=")[0].rsplit(".", 1)[0] if change.startswith("optim") else change[:-2]
    with pytest.raises(CheckpointError, match=f"different {key}"):
        run(other, run_dir=tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    data_root, tmp_path, monkeypatch
):
    from dcls_audio.data import AudioSetHDF5
    from dcls_audio.data.sampling import EpochIndex
    from dcls_audio.train.log import NonFiniteLossError

    cfg = make_cfg(data_root, "trainer.epochs=2", "trainer.warmup_epochs=0", "augment=none")
    clean = AudioSetHDF5.__getitem__

    def nan_in_epoch_two(self, index):
        wave, target = clean(self, index)
        epoch = index.epoch if isinstance(index, EpochIndex) else self.epoch  # the sampler's
        return (wave * float("nan") if self.train and epoch == 1 else wave), target

    monkeypatch.setattr(AudioSetHDF5, "__getitem__", nan_in_epoch_two)
    with pytest.raises(
        NonFiniteLossError, match=r"training loss is nan over steps 3-3 \(epoch 2\)"
    ):
        run(cfg, run_dir=tmp_path)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not (tmp_path / "results.json").exists()
    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["type"] == "error" and log[-1]["step"] == 3


def test_unwritable_run_directory_is_a_named_error_before_training(data_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder should be: fails for root too
    with pytest.raises(CheckpointError, match=r"run directory .*file/run cannot be created"):
        run(make_cfg(data_root, "trainer.max_steps=1"), run_dir=blocker / "run")


def test_check_space_names_the_space_it_needs(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from dcls_audio.train.checkpoint import check_space

    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights
    check_space(tmp_path, model, ema=True)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 2**20))
    with pytest.raises(CheckpointError, match=r"has 1 MiB free but its checkpoints need about 46"):
        check_space(tmp_path, model, ema=True)


@pytest.mark.slow
def test_stop_signals_save_the_step_and_resume_exactly_inside_epochs(synthetic_root, tmp_path):
    """Three stops in a row (SIGUSR2 twice, SIGTERM), two inside an epoch: same final state."""
    import signal

    from dcls_audio.train.preempt import Preempted

    data_root = synthetic_root(8)  # 4 optimizer steps per epoch
    cfg = make_cfg(
        data_root, "trainer.epochs=2", "trainer.warmup_epochs=1", "trainer.eval_every=2",
        "trainer.max_eval_samples=3", "trainer.ema=true", "trainer.ema_decay=0.5",
        "model.drop_path_rate=0.2",
    )  # fmt: skip
    full = run(cfg, run_dir=tmp_path / "full")
    forwarded = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: forwarded.append(s))
    try:
        for at, sig in ((1, signal.SIGUSR2), (4, signal.SIGTERM), (6, signal.SIGUSR2)):

            def hook(step, at=at, sig=sig):
                if step == at:
                    os.kill(os.getpid(), sig)
                    os.kill(os.getpid(), sig)  # a second signal changes nothing

            with pytest.raises(Preempted, match=f"stopped by {sig.name} at step {at}"):
                run(cfg, run_dir=tmp_path / "cut", on_step=hook)
            saved = load_checkpoint(tmp_path / "cut" / "last.pt")
            assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (at, at // 4, at % 4)
            assert not (tmp_path / "cut" / "results.json").exists()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert forwarded == [signal.SIGUSR2, signal.SIGUSR2]  # the earlier handler, once per stop
    resumed = run(cfg, run_dir=tmp_path / "cut")
    assert resumed["map"] == full["map"] and resumed["map_ema"] == full["map_ema"]
    assert_same_training_state(tmp_path / "full", tmp_path / "cut")
    assert results_without_timing(tmp_path / "full" / "results.json") == results_without_timing(
        tmp_path / "cut" / "results.json"
    )

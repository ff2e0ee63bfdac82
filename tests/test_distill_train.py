"""Distillation in training: stored = online teacher, the label-only end, mixup, results, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_cfg

from dcls_audio import aggregate
from dcls_audio import teacher as teacher_cmd
from dcls_audio.data import AudioSetHDF5, LogMelFrontend, MultiLabelMixup
from dcls_audio.data.teacher_logits import file_sha256
from dcls_audio.train import run
from dcls_audio.train.distill import DistillConfig, build_teacher, mix_soft, teacher_probs
from dcls_audio.train.loaders import WithIndex

BASE = ("trainer.batch_size=2", "trainer.global_batch_size=2", "optim.lr_ref_batch=2",
        "trainer.epochs=2", "trainer.eval_every=2", "trainer.max_eval_samples=3",
        "trainer.warmup_epochs=1", "model.drop_path_rate=0.0")  # fmt: skip


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def setup(synthetic_root, tmp_path_factory):
    """A trained teacher run (its last.pt) and its stored logits of the training set."""
    root = synthetic_root(4)
    d = tmp_path_factory.mktemp("distill")
    run(train_cfg(root, *BASE, "trainer.max_steps=2"), run_dir=d / "teacher")
    ckpt = d / "teacher" / "last.pt"
    sidecar = d / "logits.h5"
    args = ["--checkpoint", str(ckpt), "--data-files", str(root / "train.h5"), "--out",
            str(sidecar), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert teacher_cmd.main(args) == 0
    return root, ckpt, sidecar


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_stored_and_online_teachers_give_the_same_loss(setup):
    root, ckpt, sidecar = setup
    train = AudioSetHDF5(str(root / "train.h5"), 16)
    spec = LogMelFrontend().eval()(torch.stack([train[i][0] for i in range(4)]))
    index = torch.arange(4)
    cfg = {"weight": 0.7, "temperature": 2.0}
    on = DistillConfig.from_config({**cfg, "teacher": str(ckpt), "teacher_logits": None})
    st = DistillConfig.from_config({**cfg, "teacher": None, "teacher_logits": str(sidecar)})
    online = build_teacher(on, "multilabel", 16, torch.device("cpu"), train)
    stored = build_teacher(st, "multilabel", 16, torch.device("cpu"), train)
    off = MultiLabelMixup(enabled=False)
    a, b = online.targets(spec, index, off), stored.targets(spec, index, off)
    assert torch.allclose(a, b, atol=2e-3)  # float16 storage
    student = torch.randn(4, 16)
    label = torch.tensor(0.5)
    la, lb = online.loss(label, student, a), stored.loss(label, student, b)
    assert abs(float(la) - float(lb)) < 1e-3 * float(la)
    # the mixup of the batch mixes the teacher targets with the labels' pairs and lambda
    mix = MultiLabelMixup(alpha=0.8, label_smoothing=0.0)
    mix(spec, torch.zeros(4, 16), generator=torch.Generator().manual_seed(1))
    expect = mix_soft(teacher_probs(online.logits(spec, index), 2.0, "multilabel"),
                      mix.last_lam, mix.last_perm)  # fmt: skip
    assert torch.allclose(online.targets(spec, index, mix), expect)
    assert not torch.allclose(online.targets(spec, index, mix), a)


def test_a_teacher_with_weight_zero_stops_the_run_before_training(setup, tmp_path):
    root, ckpt, sidecar = setup
    for given in (f"distill.teacher={ckpt}", f"distill.teacher_logits={sidecar}"):
        with pytest.raises(ValueError, match=r"distill=teacher \(weight 0.9\)"):
            run(train_cfg(root, *BASE, given), run_dir=tmp_path / "zero")
        assert not (tmp_path / "zero" / "last.pt").exists()
        assert not (tmp_path / "zero" / "results.json").exists()


def test_other_weights_differ_from_no_distillation(setup, tmp_path):
    root, ckpt, sidecar = setup
    run(train_cfg(root, *BASE), run_dir=tmp_path / "plain")
    run(train_cfg(root, *BASE, "distill=teacher", f"distill.teacher_logits={sidecar}",
                         "distill.weight=0.5"), run_dir=tmp_path / "half")  # fmt: skip
    differs = [not torch.equal(v, _weights(tmp_path / "half")[k])
               for k, v in _weights(tmp_path / "plain").items()]  # fmt: skip
    assert any(differs)
    res = json.loads((tmp_path / "half" / "results.json").read_text())
    entry = res["distill"]
    assert entry["mode"] == "stored" and entry["weight"] == 0.5
    assert entry["teacher_logits"]["sha256"] == file_sha256(sidecar)
    assert entry["hash"] == file_sha256(ckpt)  # the checkpoint the logits came from
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["distill"] == {
        "mode": "none"
    }


def test_aggregation_groups_by_the_teachers_content_not_its_path(setup, tmp_path):
    root, ckpt, _ = setup
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes(ckpt.read_bytes())
    for name, path in (("a", ckpt), ("b", copy)):
        over = (f"distill.teacher={path}", "distill.weight=0.5", f"seed={ord(name)}")
        cfg = train_cfg(root, *BASE, "trainer.max_steps=1", "distill=teacher", *over)
        run(cfg, run_dir=tmp_path / name)
    groups = aggregate.load_groups(aggregate.find_results([tmp_path / "a", tmp_path / "b"]))
    assert len(groups) == 1 and len(next(iter(groups.values())).paths) == 2


def test_a_resumed_distillation_run_ends_with_the_same_weights(setup, tmp_path):
    root, _, sidecar = setup
    cfg = train_cfg(root, *BASE, "distill=teacher", f"distill.teacher_logits={sidecar}",
                    "distill.temperature=2.0")  # fmt: skip
    run(cfg, run_dir=tmp_path / "full")

    def kill(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        run(cfg, run_dir=tmp_path / "cut", on_step=kill)
    run(cfg, run_dir=tmp_path / "cut")
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_items_carry_their_index_for_stored_logits(setup):
    root, _, _ = setup
    ds = WithIndex(AudioSetHDF5(str(root / "train.h5"), 16))
    wave, target, index = ds[3]
    assert index == 3 and len(ds) == 4 and ds.num_classes == 16
    assert np.array_equal(ds.audio_names(), ds.dataset.audio_names())


def test_bad_distill_configs_are_named(setup, tmp_path):
    root, ckpt, sidecar = setup
    with pytest.raises(ValueError, match="no teacher"):
        run(train_cfg(root, *BASE, "distill=teacher"), run_dir=tmp_path / "x")
    other = AudioSetHDF5(str(root / "eval.h5"), 16)
    cfg = DistillConfig.from_config({"teacher": None, "teacher_logits": str(sidecar),
                                     "weight": 0.5, "temperature": 1.0})  # fmt: skip
    with pytest.raises(KeyError, match="no logits for 5 of 5"):
        build_teacher(cfg, "multilabel", 16, torch.device("cpu"), other)
    train = AudioSetHDF5(str(root / "train.h5"), 16)
    with pytest.raises(ValueError, match="multilabel teacher, the run is multiclass"):
        build_teacher(cfg, "multiclass", 16, torch.device("cpu"), train)

"""Distillation: the teacher loss, soft-target mixing, the config, and stored teacher logits."""

import h5py
import numpy as np
import pytest
import torch
from conftest import cfgs
from torch.nn import functional as F

from dcls_audio import teacher as teacher_cmd
from dcls_audio.data import AudioSetHDF5, LogMelFrontend, MultiLabelMixup
from dcls_audio.data.teacher_logits import TeacherLogits, file_sha256, read_attrs
from dcls_audio.train import distill
from dcls_audio.train.evaluate import predict


def test_multilabel_teacher_loss_is_bce_of_tempered_sigmoids():
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    T = 2.0
    p = distill.teacher_probs(t, T, "multilabel")
    q = torch.sigmoid(s / T)
    by_hand = -(p * q.log() + (1 - p) * (1 - q).log()).mean()
    assert torch.allclose(distill.teacher_loss(s, p, T, "multilabel"), by_hand, atol=1e-6)


def test_multiclass_teacher_loss_is_t2_scaled_kl():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 3.0
    p = distill.teacher_probs(t, T, "multiclass")
    ref = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                   log_target=True) * T**2  # fmt: skip
    assert torch.allclose(distill.teacher_loss(s, p, T, "multiclass"), ref, atol=1e-5)
    assert distill.teacher_loss(t, p, T, "multiclass").abs() < 1e-5  # student = teacher: 0


def test_soft_targets_are_mixed_with_the_labels_pairs():
    mix = MultiLabelMixup(alpha=0.8, label_smoothing=0.0)
    x, y = torch.randn(6, 1, 4, 4), (torch.rand(6, 5) < 0.5).float()
    probs = torch.rand(6, 5)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    _, mixed_y = mix(x, y, generator=g1)
    lam, perm = mix.draw(6, g2)
    assert torch.allclose(mixed_y, distill.mix_soft(y, lam, perm))
    assert torch.allclose(distill.mix_soft(probs, lam, perm), lam * probs + (1 - lam) * probs[perm])


def test_config_is_validated():
    ok = distill.DistillConfig.from_config
    off = ok({"teacher": None, "teacher_logits": None, "weight": 0, "temperature": 1})
    assert off.mode == "none"
    on = ok({"teacher": "a.pt", "teacher_logits": None, "weight": 0.5, "temperature": 2})
    assert (on.mode, on.teacher) == ("online", ("a.pt",))
    st = ok({"teacher": None, "teacher_logits": "t.h5", "weight": 0.9, "temperature": 1})
    assert st.mode == "stored"
    with pytest.raises(ValueError, match="both set"):
        ok({"teacher": "a.pt", "teacher_logits": "t.h5", "weight": 0.5, "temperature": 1})
    with pytest.raises(ValueError, match="no teacher"):
        ok({"teacher": None, "teacher_logits": None, "weight": 0.5, "temperature": 1})
    with pytest.raises(ValueError, match=r"distill.weight=1.5"):
        ok({"teacher": "a.pt", "teacher_logits": None, "weight": 1.5, "temperature": 1})


@pytest.mark.parametrize("given", ["teacher", "teacher_logits"])
def test_a_teacher_with_weight_zero_is_refused(given):
    """A teacher that would cost its forward passes and change nothing stops the run."""
    cfg = {"teacher": None, "teacher_logits": None, "weight": 0.0, "temperature": 1}
    with pytest.raises(ValueError) as err:
        distill.DistillConfig.from_config({**cfg, given: "t.file"})
    text = str(err.value)
    assert f"distill.{given} is set but distill.weight=0" in text
    assert "distill=teacher (weight 0.9)" in text


NAMES = [f"class{i}" for i in range(16)]


def _checkpoint(path, seed: int):
    from dcls_audio.models import build_model

    model_cfg, conv_cfg = cfgs("convnext_atto", "dcls_gauss", 16, drop_path_rate=0.0)
    conv_cfg.update(dilated_kernel_size=5, kernel_count=3)
    torch.manual_seed(seed)
    model = build_model(model_cfg, conv_cfg).eval()
    config = {"model": model_cfg, "conv": conv_cfg, "data": {"clip_seconds": 10.0}}
    torch.save({"model": model.state_dict(), "config": config, "class_names": NAMES}, path)
    return model


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, synthetic_root):
    d = tmp_path_factory.mktemp("teachers")
    models = [_checkpoint(d / f"t{i}.pt", seed=i) for i in range(2)]
    return d, models, synthetic_root(6)


def test_sidecar_holds_the_ensembles_mean_probability_in_file_order(teachers, tmp_path):
    d, models, root = teachers
    files = [str(root / "eval.h5"), str(root / "train.h5")]
    out = tmp_path / "logits.h5"
    rc = teacher_cmd.main(["--checkpoint", str(d / "t0.pt"), "--checkpoint", str(d / "t1.pt"),
                           "--data-files", *files, "--out", str(out), "--block", "4",
                           "--device", "cpu", "--no-progress"])  # fmt: skip
    assert rc == 0 and out.is_file() and not (tmp_path / "logits.h5.partial").exists()
    dataset = AudioSetHDF5(files, 16)
    loader = torch.utils.data.DataLoader(dataset, 4)
    probs = [predict(m, LogMelFrontend(), loader, "cpu")[0] for m in models]
    mean = np.clip((probs[0] + probs[1]) / 2, 1e-6, 1 - 1e-6)
    info = read_attrs(out)
    assert info["rows"] == info["rows_done"] == len(dataset) == 11
    assert [t["sha256"] for t in info["teachers"]] == [file_sha256(d / f"t{i}.pt") for i in (0, 1)]
    with h5py.File(out) as f:
        stored = f["logits"][()]
        assert f["logits"].dtype == np.float16
        assert list(f["audio_name"][()]) == list(dataset.audio_names())
    assert np.allclose(1 / (1 + np.exp(-stored.astype(np.float64))), mean, atol=2e-3)
    # looked up by name in another dataset's order (the training set alone)
    train = AudioSetHDF5(str(root / "train.h5"), 16)
    looked = TeacherLogits(out, train.audio_names(), 16)
    assert np.array_equal(looked[[0, 5]], stored[[5, 10]].astype(np.float32))


def test_an_interrupted_teacher_run_resumes_to_the_same_file(teachers, tmp_path, monkeypatch):
    d, _, root = teachers
    args = ["--checkpoint", str(d / "t0.pt"), "--data-files", str(root / "train.h5"),
            "--block", "2", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert teacher_cmd.main([*args, "--out", str(tmp_path / "whole.h5")]) == 0
    calls = {"n": 0}
    real = predict

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk went away")
        return real(*a, **k)

    monkeypatch.setattr("dcls_audio.train.evaluate.predict", failing)
    assert teacher_cmd.main([*args, "--out", str(tmp_path / "cut.h5")]) == 2
    partial = tmp_path / "cut.h5.partial"
    assert read_attrs(partial)["rows_done"] == 4 and not (tmp_path / "cut.h5").exists()
    with pytest.raises(ValueError, match="only 4 of 6 rows"):
        TeacherLogits(partial, AudioSetHDF5(str(root / "train.h5"), 16).audio_names(), 16)
    monkeypatch.setattr("dcls_audio.train.evaluate.predict", real)
    assert teacher_cmd.main([*args, "--out", str(tmp_path / "cut.h5")]) == 0
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "cut.h5") as b:
        assert np.array_equal(a["logits"][()], b["logits"][()])


def test_missing_clips_and_wrong_files_are_named(teachers, tmp_path):
    d, _, root = teachers
    out = tmp_path / "t.h5"
    assert teacher_cmd.main(["--checkpoint", str(d / "t0.pt"), "--data-files",
                             str(root / "train.h5"), "--out", str(out), "--device", "cpu",
                             "--no-progress"]) == 0  # fmt: skip
    eval_names = AudioSetHDF5(str(root / "eval.h5"), 16).audio_names()
    with pytest.raises(KeyError, match=r"no logits for 5 of 5 clips"):
        TeacherLogits(out, eval_names, 16)
    with pytest.raises(ValueError, match="16 classes, the model has 10"):
        TeacherLogits(out, eval_names, 10)
    with pytest.raises(ValueError, match="format=None"):
        read_attrs(root / "train.h5")

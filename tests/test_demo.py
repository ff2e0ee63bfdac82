import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import ROOT

from dcls_audio.data import AudioSetHDF5, LogMelFrontend
from dcls_audio.demo import format_summary, linear_probe, probe_features, run_demo


def test_probe_features_are_per_bin_time_statistics(synthetic_root):
    root = synthetic_root(4)
    data = AudioSetHDF5(root / "train.h5", num_classes=16)
    feats, targets = probe_features(data, batch_size=3)
    assert feats.shape == (4, 4 * 128) and targets.shape == (4, 16)
    for i in (0, 3):
        wave, target = data[i]
        x = LogMelFrontend().eval()(wave[None])[0, 0].double().numpy()  # (128, frames)
        want = np.concatenate([x.mean(1), x.std(1, ddof=1), x.max(1), np.quantile(x, 0.9, axis=1)])
        np.testing.assert_allclose(feats[i], want, atol=1e-4)
        np.testing.assert_array_equal(targets[i], target.numpy())


def test_linear_probe_separates_informative_features_only():
    rng = np.random.default_rng(0)
    y = rng.random((400, 3)) < 0.3
    x = rng.normal(size=(400, 6))
    x[:, :3] += 4.0 * y  # feature c carries class c
    train, evaluation = (x[:300], y[:300]), (x[300:], y[300:])
    assert linear_probe(train, evaluation)["map"] > 0.95
    noise = rng.normal(size=(400, 6))
    chance = linear_probe((noise[:300], y[:300]), (noise[300:], y[300:]))["map"]
    assert chance < 0.5  # about the label prior (0.3)


def test_format_summary_prints_both_convs_and_ratios():
    summary = {
        "probe": {"map": 0.5, "mauc": 0.8, "dprime": 1.2},
        "dsc": {"map": 0.45, "mauc": 0.85, "dprime": 1.4},
        "dcls_gauss": {"map": 0.47, "mauc": 0.86, "dprime": 1.5},
        "seconds": 512.3,
    }
    text = format_summary(summary)
    assert "dcls_gauss mAP / probe mAP = 0.940" in text
    assert "dcls_gauss - dsc mAP = +0.0200" in text
    assert text.splitlines()[1].startswith("probe") and "0.5000" in text


@pytest.mark.slow
def test_demo_writes_summary_runs_and_plots(tmp_path):
    from dcls_audio.datasets.sounds import make_sounds

    data = tmp_path / "sounds"
    make_sounds(data, n_train=8, n_eval=6, clip_seconds=5.0, workers=1)
    out = tmp_path / "demo"
    overrides = [
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "trainer.global_batch_size=4",
        "data.num_workers=0",
    ]
    torch.manual_seed(0)
    summary = run_demo(out, data, seed=0, overrides=overrides)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert set(summary) == {"probe", "dsc", "dcls_gauss", "seconds"}
    for name in ("probe", "dsc", "dcls_gauss"):
        assert set(summary[name]) == {"map", "mauc", "dprime"}
        assert 0.0 < summary[name]["map"] <= 1.0
    for conv in ("dsc", "dcls_gauss"):
        results = json.loads((out / conv / "results.json").read_text())
        assert results["config"]["conv"]["name"] == conv
        assert results["map"] == pytest.approx(summary[conv]["map"])
        assert (out / conv / "plots" / "curves.png").stat().st_size > 0
    assert (out / "dcls_gauss" / "plots" / "positions.png").stat().st_size > 0
    assert not (out / "dsc" / "plots" / "positions.png").exists()
    assert (out / "curves.png").stat().st_size > 0


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_resumes_and_demo_fresh_starts_over():
    def recipe(target: str) -> str:
        cmd = ["make", "-n", "-s", "--no-print-directory", "-C", str(ROOT), target]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    demo, fresh = recipe("demo"), recipe("demo-fresh")
    assert "dcls-audio-demo --out outputs/demo" in demo and "rm " not in demo
    assert fresh.splitlines()[0] == "rm -rf outputs/demo" and "dcls-audio-demo" in fresh

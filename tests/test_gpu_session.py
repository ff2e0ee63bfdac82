"""The GPU session driver's CPU-side pieces: end-to-end rates, checkpoint comparison, layouts."""

import json

import pytest
import torch

from dcls_audio.benchmarks import gpu_session


def _metrics(path, rows):
    lines = [json.dumps({"type": "train", "step": s, "epoch": e, "samples_per_s": r})
             for s, e, r in rows]  # fmt: skip
    lines.insert(1, json.dumps({"type": "eval", "step": 1, "map": 0.5}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_steady_rate_leaves_out_each_epochs_first_window(tmp_path):
    _metrics(tmp_path, [(16, 0, 90.0), (32, 0, 800.0), (48, 0, 1000.0), (64, 1, 400.0),
                        (80, 1, 900.0), (96, 1, 1100.0)])  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"map": 0.25, "train_samples_per_s": 420}))
    out = gpu_session.run_rate(tmp_path)
    assert out["steady_samples_per_s"] == 950.0  # median of 800, 1000, 900, 1100
    assert out["windows"][0] == 90.0 and out["map"] == 0.25
    assert out["results_train_samples_per_s"] == 420


def _checkpoint(path, scale):
    model = {"w": torch.ones(3) * scale, "step_count": torch.tensor(3)}
    opt = {"state": {0: {"exp_avg": torch.ones(3) * scale, "step": torch.tensor(2.0)}}}
    torch.save({"model": model, "ema": None, "optimizer": opt, "step": 16}, path)


def test_same_weights_compares_model_and_adam_moments(tmp_path):
    _checkpoint(tmp_path / "a.pt", 1.0)
    _checkpoint(tmp_path / "b.pt", 1.0)
    _checkpoint(tmp_path / "c.pt", 1.5)
    same = gpu_session.same_weights(tmp_path / "a.pt", tmp_path / "b.pt")
    assert same["identical"] and same["model_max_abs_diff"] == 0
    other = gpu_session.same_weights(tmp_path / "a.pt", tmp_path / "c.pt")
    assert not other["identical"] and other["model_max_abs_diff"] == pytest.approx(0.5)
    assert other["optimizer_max_abs_diff"] == pytest.approx(0.5)

"""dcls-audio-evaluate: a checkpoint in the authors' layout scores as its reference model does.

The reference scores come from the reference model (timm + the `dcls` package, see
tests/reference_models.py) on the same log-mel input, through scikit-learn's average precision;
the command's mAP must equal them to 1e-4 on a generated 527-class eval file.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from reference_models import authors_file, reference_model
from sklearn.metrics import average_precision_score

from dcls_audio import evaluate
from dcls_audio.data import LogMelFrontend

logging.getLogger().setLevel(logging.ERROR)  # the dcls package warns on every CPU layer


def write_eval_file(path, n: int, classes: int = 527, seed: int = 0) -> np.ndarray:
    """A PANNs-layout eval file of ``n`` noisy tone clips with random multi-hot targets."""
    rng = np.random.default_rng(seed)
    t = np.arange(320000) / 32000
    waves = np.stack(
        [
            0.3 * np.sin(2 * np.pi * rng.uniform(100, 8000) * t)
            + 0.05 * rng.standard_normal(t.size)
            for _ in range(n)
        ]
    )
    targets = rng.random((n, classes)) < 0.3
    targets[0, :] = True  # every class has a positive
    with h5py.File(path, "w") as f:
        f.attrs["sample_rate"] = 32000
        f["audio_name"] = np.array([f"Yclip{i:04d}.wav".encode() for i in range(n)], dtype="S20")
        f["waveform"] = (waves * 32767).astype(np.int16)
        f["target"] = targets
    return targets


def reference_map(model, path, targets: np.ndarray) -> float:
    """Macro mAP of the reference model over the file's clips (classes with a positive)."""
    with h5py.File(path, "r") as f:
        wave = torch.from_numpy(f["waveform"][()].astype(np.float32) / 32768.0)
    with torch.no_grad():
        scores = torch.sigmoid(model(LogMelFrontend().eval()(wave))).numpy()
    aps = [
        average_precision_score(targets[:, c], scores[:, c])
        for c in range(targets.shape[1])
        if targets[:, c].any()
    ]
    return float(np.mean(aps))


def run_bar(tmp_path, model: str, n: int) -> None:
    ref = reference_model(model, True)
    ckpt = tmp_path / "convnext_dcls_audio_tiny.pth"
    authors_file(ckpt, model, ref, "convnext_dcls_audio_tiny")
    eval_file = tmp_path / "eval.h5"
    targets = write_eval_file(eval_file, n)
    out = tmp_path / "out" / "metrics.json"
    args = ["--checkpoint", str(ckpt), "--eval-files", str(eval_file), "--batch-size", "3"]
    args += ["--json", str(out), "--no-progress", "--device", "cpu"]
    if model != "convnext_t":
        args += ["--model", model]
    assert evaluate.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["map"] == pytest.approx(reference_map(ref, eval_file, targets), abs=1e-4)
    assert doc["num_eval_clips"] == n and doc["world_size"] == 1
    assert doc["weights"] == "model_ema" and doc["format"] == "official"
    assert (doc["model"], doc["conv"]) == (model, "dcls_gauss")
    assert len(doc["per_class_ap"]) == len(doc["class_names"]) == 527
    assert doc["num_classes_scored"] == 527
    assert math.isfinite(doc["mauc"]) and math.isfinite(doc["dprime"])


def test_authors_layout_evaluates_to_the_reference_map_small(tmp_path):
    """The Bar's path on ConvNeXt-atto (same layout, fast)."""
    run_bar(tmp_path, "convnext_atto", 6)


@pytest.mark.slow
def test_bar_convnext_t_dcls_gauss_evaluates_to_the_reference_map(tmp_path):
    """The Bar: ConvNeXt-T DCLS-Gauss 23x23/26 in the authors' layout, 527 classes."""
    run_bar(tmp_path, "convnext_t", 8)


def test_errors_name_the_problem(tmp_path, capsys):
    eval_file = tmp_path / "eval.h5"
    write_eval_file(eval_file, 2)
    missing = ["--checkpoint", str(tmp_path / "nope.pt"), "--eval-files", str(eval_file)]
    assert evaluate.main(missing) == 2
    assert "nope.pt: no such file" in capsys.readouterr().err
    ref = reference_model("convnext_atto", False)
    ckpt = tmp_path / "c.pth"
    authors_file(ckpt, "convnext_atto", ref, "x")
    wrong = ["--checkpoint", str(ckpt), "--eval-files", str(eval_file), "--conv", "dcls_gauss"]
    assert evaluate.main([*wrong, "--no-progress"]) == 2
    assert "choose conv=dsc" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_score_every_clip_once(tmp_path):
    """torchrun with 2 gloo ranks and 5 clips: same metrics as one process."""
    ref = reference_model("convnext_atto", False)
    ckpt = tmp_path / "c.pth"
    authors_file(ckpt, "convnext_atto", ref, "x")
    eval_file = tmp_path / "eval.h5"
    write_eval_file(eval_file, 5)
    docs = []
    for procs in (1, 2):
        out = tmp_path / f"w{procs}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
        cmd += ["-m", "dcls_audio.evaluate", "--checkpoint", str(ckpt), "--device", "cpu"]
        cmd += ["--eval-files", str(eval_file), "--json", str(out), "--batch-size", "2"]
        subprocess.run(cmd, check=True, timeout=600, capture_output=True)
        docs.append(json.loads(out.read_text()))
    assert docs[1]["world_size"] == 2 and docs[1]["num_eval_clips"] == 5
    assert docs[1]["map"] == pytest.approx(docs[0]["map"], abs=1e-6)
    np.testing.assert_allclose(docs[1]["per_class_ap"], docs[0]["per_class_ap"], atol=1e-6)

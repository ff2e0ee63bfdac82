"""DCLS figures: positions per stage, constructed kernels, training curves, the script."""

import json
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from conftest import cfgs

from dcls_audio import plot
from dcls_audio.runfiles import read_jsonl

MODEL_CFG, CONV_CFG = cfgs("convnext_atto", "dcls_gauss", 4, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def model():
    from dcls_audio.models import build_model

    torch.manual_seed(0)
    return build_model(MODEL_CFG, CONV_CFG).eval()


def test_stages_group_shared_positions(model):
    stages = plot.dcls_stages(model)
    assert len(stages) == 4  # ConvNeXt: one shared P per stage
    for _, layers in stages:
        assert len({id(m.P) for _, m in layers}) == 1
    assert sum(len(layers) for _, layers in stages) == 2 + 2 + 6 + 2  # convnext_atto depths


def test_position_cells_are_offsets_from_the_centre(model):
    mod = plot.dcls_stages(model)[0][1][0][1]
    p = mod.P.detach().clone()
    p[0].fill_(-11.0)  # first row of the 23x23 grid
    p[1].fill_(3.0)  # column 14
    p[1, 0, 0, 0] = 11.0  # one element in the last column
    with torch.no_grad():
        saved = mod.P.detach().clone()
        mod.P.copy_(p)
    try:
        cells = plot.position_cells(mod)
    finally:
        with torch.no_grad():
            mod.P.copy_(saved)
    assert cells.shape == (2, mod.P[0].numel())
    assert np.all(cells[0] == 0.0)
    assert cells[1, 0] == 22.0 and np.all(cells[1, 1:] == 14.0)


def test_curves_from_handwritten_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [
        {
            "type": "train",
            "step": s,
            "epoch": s // 10,
            "loss": 0.7 - 0.01 * s,
            "lr": 1e-3 * min(1, s / 5),
        }
        for s in range(30)
    ]
    lines += [{"type": "eval", "step": 10 * e, "epoch": e, "map": 0.2 + 0.2 * e} for e in (1, 2, 3)]
    lines += [{"type": "epoch", "step": 10 * e, "epoch": e, "loss": 9.0} for e in (1, 2, 3)]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    recs = read_jsonl(log)
    assert plot._series(recs, "epoch", "map", "eval") == ([1, 2, 3], [0.4, pytest.approx(0.6), 0.8])
    xs, ys = plot._series(recs, "step", "loss", "train")
    assert xs == list(range(30)) and 9.0 not in ys  # epoch means are not mixed into the curve
    out = plot.plot_curves(recs, tmp_path / "curves.png")
    assert mpimg.imread(out).ndim == 3
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_plot_script_writes_pngs(tmp_path, model):
    run = tmp_path / "run"
    run.mkdir()
    torch.save(
        {
            "model": model.state_dict(),
            "ema": None,
            "config": {"model": MODEL_CFG, "conv": CONV_CFG},
            "class_names": list("abcd"),
            "epoch": 0,
            "step": 3,
        },
        run / "last.pt",
    )
    recs = [
        {"type": "train", "step": s, "epoch": 0, "loss": 1.0 / (s + 1), "lr": 1e-3}
        for s in range(5)
    ] + [{"type": "eval", "step": 5, "epoch": 0, "map": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcls_audio.plot",
            str(run / "last.pt"),
            "--out",
            str(tmp_path / "plots"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("positions.png", "kernels.png", "curves.png"):
        img = mpimg.imread(tmp_path / "plots" / name)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert img[..., :3].std() > 0.05  # not a blank page

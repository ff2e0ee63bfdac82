"""Trainer end to end on the CPU: a short run(cfg) on synthetic data, batch arithmetic, errors."""

import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import train_cfg
from torch.utils.data import DataLoader

from dcls_audio.data import AudioSetHDF5, LogMelFrontend
from dcls_audio.dcls import DclsNd
from dcls_audio.models import build_model
from dcls_audio.runfiles import INFO_KEYS as RESULT_INFO_KEYS
from dcls_audio.runfiles import METRIC_KEYS as RESULT_METRIC_KEYS
from dcls_audio.train import run
from dcls_audio.train.checkpoint import REQUIRED_KEYS
from dcls_audio.train.distributed import accumulation_steps
from dcls_audio.train.evaluate import ShardedEvalSampler, predict
from dcls_audio.train.log import RunLogger, format_duration
from dcls_audio.train.metrics import compute_metrics


def make_cfg(data_root, *overrides, conv="dcls_gauss"):
    """The tiny run: batch 2 x 2 accumulation, one epoch without warm-up."""
    base = ("trainer.batch_size=2", "trainer.global_batch_size=4", "trainer.epochs=1")
    base += ("trainer.warmup_epochs=0", "optim.lr_ref_batch=4")
    return train_cfg(data_root, *base, *overrides, conv=conv)


@pytest.fixture(scope="module")
def data_root(synthetic_root):
    return synthetic_root(8)


def load_model(cfg, state):
    model = build_model(cfg.model, cfg.conv)
    model.load_state_dict(state)
    return model


def test_run_writes_results_and_checkpoints(data_root, tmp_path, monkeypatch):
    import dcls_audio.models

    built = []

    def capture(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    def push_positions_out(step):
        # After step 1 move every position far off the kernel; step 2 must clamp them back.
        if step == 1:
            with torch.no_grad():
                for m in built[0].modules():
                    if isinstance(m, DclsNd):
                        m.P.fill_(50.0)

    monkeypatch.setattr(dcls_audio.models, "build_model", capture)
    cfg = make_cfg(data_root, "trainer.max_steps=2")
    metrics = run(cfg, run_dir=tmp_path, on_step=push_positions_out)

    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == set(RESULT_METRIC_KEYS) | set(RESULT_INFO_KEYS)
    assert "map_ema" not in results
    assert len(results["per_class_ap"]) == 16 and len(results["class_names"]) == 16
    assert results["seed"] == 0 and results["steps"] == 2 and results["num_eval_clips"] == 5
    assert results["config"]["trainer"]["batch_size"] == 2
    assert results["commit"] is None or len(results["commit"]) == 40
    assert results["wall_time_s"] > 0 and results["train_samples_per_s"] > 0
    assert math.isclose(metrics["map"], results["map"])
    assert math.isclose(results["dprime"], math.sqrt(2) * _ndtri(results["mauc"]), rel_tol=1e-6)

    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert set(REQUIRED_KEYS) | {"rng", "class_names", "epoch_step"} <= set(ckpt)
    assert ckpt["step"] == 2 and ckpt["ema"] is None
    assert (tmp_path / "best.pt").exists()
    model = load_model(cfg, ckpt["model"])
    assert results["params"] == sum(p.numel() for p in model.parameters())

    # Positions were clamped after the optimizer step (onto the upper limit, 5 // 2 = 2).
    dcls_layers = [m for m in model.modules() if isinstance(m, DclsNd)]
    assert dcls_layers
    for m in dcls_layers:
        assert m.position_limits() == ((-2, 2), (-2, 2))
        assert torch.equal(m.P.detach(), torch.full_like(m.P, 2.0))

    # The reported metrics are those of the final weights, recomputed independently here.
    ds = AudioSetHDF5([data_root / "eval.h5"], 16)
    loader = DataLoader(ds, batch_size=3, sampler=ShardedEvalSampler(len(ds)))
    scores, targets = predict(model, LogMelFrontend(), loader, "cpu")
    ref = compute_metrics(scores, targets)
    assert math.isclose(ref["map"], results["map"], rel_tol=1e-6)
    assert math.isclose(ref["mauc"], results["mauc"], rel_tol=1e-6)

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["type"] == "train"] == [1, 2]
    assert any(x["type"] == "eval" for x in lines)

    # A finished run started again in its directory does not train again.
    again = run(cfg, run_dir=tmp_path)
    assert again["map"] == metrics["map"]


def _ndtri(p):
    from scipy.stats import norm

    return norm.ppf(p)


@pytest.mark.slow
def test_accumulation_equals_large_batch(data_root, tmp_path):
    """batch 2 x 2 accumulation steps == batch 4 in one step (weights, Adam moments)."""
    common = (
        "trainer.max_steps=1",
        "trainer.max_eval_samples=1",
        "augment=none",
        "model.drop_path_rate=0",
    )
    a = make_cfg(data_root, *common)
    b = make_cfg(data_root, *common, "trainer.batch_size=4")
    run(a, run_dir=tmp_path / "a")
    run(b, run_dir=tmp_path / "b")
    ca = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    cb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    init = build_model(a.model, a.conv).state_dict()
    # Adam's first step moves each weight by about lr * sign(gradient): where a gradient is at
    # float-noise level the two summation orders may give opposite signs, so a handful of
    # elements may differ by ~lr; everything else must agree.
    moved, far, total = 0, 0, 0
    for k, v in ca["model"].items():
        close = torch.isclose(v, cb["model"][k], rtol=1e-3, atol=1e-4)
        far, total = far + int((~close).sum()), total + close.numel()
        moved += int(not torch.equal(v, init[k]))
    assert far <= max(2, total // 20000), f"{far} of {total} weights differ"
    assert moved > 10  # the comparison is not between two untrained models
    # Adam's first moment is proportional to the gradient: catches a missing 1/accum factor.
    for sa, sb in zip(
        ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True
    ):
        rel = (sa["exp_avg"] - sb["exp_avg"]).norm() / sb["exp_avg"].norm().clamp_min(1e-12)
        assert rel < 1e-3, rel


@pytest.mark.parametrize(
    ("global_batch", "batch", "world", "steps"),
    [(4096, 128, 32, 1), (4096, 64, 32, 2), (4096, 128, 1, 32), (4096, 128, 8, 4), (6, 3, 2, 1)],
)
def test_accumulation_steps(global_batch, batch, world, steps):
    assert accumulation_steps(global_batch, batch, world) == steps


def test_accumulation_steps_not_divisible():
    with pytest.raises(ValueError, match=r"global_batch_size=4096.*batch_size=96.*world size 8"):
        accumulation_steps(4096, 96, 8)
    with pytest.raises(ValueError, match="positive"):
        accumulation_steps(4096, 0, 1)


def test_indivisible_batch_fails_before_training(data_root, tmp_path):
    cfg = make_cfg(data_root, "trainer.global_batch_size=5")
    with pytest.raises(ValueError, match="not divisible"):
        run(cfg, run_dir=tmp_path)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize(
    "override", ["augment.speed_range=[1.5]", "augment.speed_range=[1.5,0.5]", "augment.speed_p=2"]
)
def test_bad_augmentation_config_is_named(data_root, tmp_path, override):
    cfg = make_cfg(data_root, override)
    with pytest.raises(ValueError, match=r"augment.speed_p=.*augment.speed_range=.*expected"):
        run(cfg, run_dir=tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_global_batch_larger_than_dataset(data_root, tmp_path):
    cfg = make_cfg(data_root, "trainer.global_batch_size=16")
    with pytest.raises(ValueError, match="exceeds the 8 training clips"):
        run(cfg, run_dir=tmp_path)


def test_missing_data_path_says_how_to_create_it(tmp_path):
    cfg = make_cfg(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data.train_files.*dcls-audio-synthetic --out"):
        run(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "maker", "wrong"),
    [
        (["experiment=demo"], "`dcls-audio-sounds --out {root} --clip-seconds 5.0` (or `make "
         "demo`", "dcls-audio-synthetic"),
        (["data=sounds"], "dcls-audio-sounds --out {root} ", "dcls-audio-synthetic"),
        (["data=synthetic"], "`dcls-audio-synthetic --out {root}`", "dcls-audio-sounds"),
        (["data=audioset"], "`dcls-audio-pack audioset --audio-dir <clips> --segments "
         "<split>_segments.csv --out {root}/balanced_train.h5`", "dcls-audio-synthetic"),
        (["data=custom"], "`dcls-audio-pack custom --audio-dir <audio> --csv <meta.csv> --out "
         "{root}/own.h5 --clip-seconds 5.0`", "dcls-audio-synthetic"),
    ],
)  # fmt: skip
def test_missing_data_names_the_maker_of_its_own_config(tmp_path, overrides, maker, wrong):
    from dcls_audio.config import compose_config
    from dcls_audio.train.loaders import resolve_data_files

    root = tmp_path / "nowhere"
    cfg = compose_config([*overrides, f"data.root={root}"])
    with pytest.raises(FileNotFoundError) as err:
        resolve_data_files(cfg.data, "train_files")
    text = str(err.value)
    assert text.startswith(f"data.train_files: {root}/")
    assert maker.format(root=root) in text and wrong not in text
    assert "{dir}" not in text and "{file}" not in text


def test_a_data_config_without_a_make_hint_gets_the_general_one(tmp_path):
    from omegaconf import OmegaConf

    from dcls_audio.train.loaders import resolve_data_files

    data = OmegaConf.create({"train_files": [str(tmp_path / "x.h5")]})
    with pytest.raises(FileNotFoundError, match=f"dcls-audio-synthetic --out {tmp_path}`"):
        resolve_data_files(data, "train_files")


def test_data_globs_expand(data_root, tmp_path):
    from dcls_audio.train.loaders import resolve_data_files

    cfg = make_cfg(data_root, f"data.train_files=[{data_root}/*.h5]")
    files = resolve_data_files(cfg.data, "train_files")
    assert [Path(f).name for f in files] == ["eval.h5", "train.h5"]
    cfg = make_cfg(data_root, f"data.eval_files=[{data_root}/none*.h5]")
    with pytest.raises(FileNotFoundError, match="data.eval_files"):
        resolve_data_files(cfg.data, "eval_files")


def test_run_logger_jsonl_console_and_wandb_modes(tmp_path):
    with pytest.raises(ValueError, match="wandb.mode='cloud'"):
        RunLogger(tmp_path, wandb_cfg={"mode": "cloud"})
    out = io.StringIO()
    logger = RunLogger(tmp_path, wandb_cfg={"mode": "disabled"}, stream=out)
    logger.record("eval", {"map": float("nan"), "per_class_ap": [0.5, float("nan")]}, step=3)
    logger.train_progress(0, 2, 3, 10, 0.5, 1e-3, 12.0, 3725.0)
    logger.close()
    entry = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert entry["type"] == "eval" and entry["step"] == 3
    assert entry["map"] is None and entry["per_class_ap"] == [0.5, None]
    assert out.getvalue().strip() == (
        "epoch 1/2 step  3/10 loss 0.5000 lr 1.000e-03 12.0 samples/s eta 1:02:05"
    )
    assert format_duration(90061) == "1-01:01:01"
    quiet = RunLogger(tmp_path / "other", active=False, wandb_cfg={"mode": "online"})
    quiet.record("train", {"loss": 1.0}, step=1)
    quiet.print("nothing")
    assert not (tmp_path / "other").exists()

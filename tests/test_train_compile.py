"""trainer.compile and trainer.channels_last: compiled runs, their checkpoints, the warm-up."""

import json

import pytest
import torch
from conftest import train_cfg
from torch import nn

from dcls_audio.train import run
from dcls_audio.train.accel import (
    check_compile,
    compile_module,
    resolve_channels_last,
    untouched,
    warm_up,
)

SMALL = ("+model.timm_kwargs.dims=[8,16,32,64]", "+model.timm_kwargs.depths=[1,1,1,1]")


def small_cfg(data_root, *overrides):
    """Two optimizer steps of a small DCLS ConvNeXt, no augmentation draws in the workers."""
    base = (
        "trainer.batch_size=2", "trainer.global_batch_size=2", "optim.lr_ref_batch=2",
        "trainer.epochs=2", "trainer.warmup_epochs=0", "trainer.max_eval_samples=2",
        "trainer.eval_batch_size=2", "trainer.max_steps=2", *SMALL,
    )  # fmt: skip
    return train_cfg(data_root, *base, *overrides)


@pytest.fixture(scope="module")
def data_root(synthetic_root):
    return synthetic_root(2)


def losses(run_dir):
    """Training losses by step from metrics.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in lines if e.get("type") == "train"}


@pytest.mark.slow
def test_compiled_run_matches_eager_saves_plain_keys_and_resumes_eagerly(data_root, tmp_path):
    """trainer.compile=default on the CPU (inductor): same losses and weights as eager
    (rtol 1e-4 / atol 1e-5: inductor reorders float sums), a last.pt with the bare model's
    keys, and an eager run in the same directory resumes it and records the change."""
    eager_dir, compiled_dir = tmp_path / "eager", tmp_path / "compiled"
    run(small_cfg(data_root, "trainer.epochs=4", "trainer.max_steps=4"), run_dir=eager_dir)
    run(small_cfg(data_root, "trainer.compile=default", "trainer.epochs=4"), run_dir=compiled_dir)

    saved = torch.load(compiled_dir / "last.pt", weights_only=True)
    assert saved["step"] == 2
    keys = list(saved["model"])
    assert keys and not [k for k in keys if "_orig_mod" in k or k.startswith("module.")]
    reference = torch.load(eager_dir / "last.pt", weights_only=True)
    results = json.loads((compiled_dir / "results.json").read_text())
    assert results["device"]["compile"] == "default"

    # the same directory, eager, two more steps: resumes from the compiled run's step 2
    run(small_cfg(data_root, "trainer.epochs=4", "trainer.max_steps=4"), run_dir=compiled_dir)
    log = (compiled_dir / "train.log").read_text()
    assert "resuming from" in log and "changed: trainer" in log
    resumed = torch.load(compiled_dir / "last.pt", weights_only=True)
    assert resumed["step"] == 4
    got, want = losses(compiled_dir), losses(eager_dir)
    assert sorted(got) == [1, 2, 3, 4]
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    for k, v in reference["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-4, atol=1e-5)


class _Noisy(nn.Module):
    """BatchNorm (a buffer the forward updates) and dropout (random draws)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.conv(x))).mean((2, 3))


def test_warm_up_draws_nothing_and_changes_nothing():
    torch.manual_seed(0)
    model = _Noisy().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    warm_up(model, (2, 1, 8, 8), torch.device("cpu"), amp=False, channels_last=True)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
    # without the guard the same forward moves the running mean and draws dropout masks
    model.train()
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert not torch.equal(model.bn.running_mean, state["bn.running_mean"])
    with untouched(model, torch.device("cpu")):
        model.conv.weight.grad.fill_(1.0)
    assert not torch.equal(model.conv.weight.grad, torch.ones_like(model.conv.weight))


def test_compile_options_are_checked_where_the_run_is():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert check_compile(None, cpu, 1) == "none" and check_compile("default", cpu, 2) == "default"
    with pytest.raises(ValueError, match=r"trainer.compile='fast': expected one of none, default"):
        check_compile("fast", cpu, 1)
    with pytest.raises(ValueError, match=r"reduce-overhead captures CUDA graphs .* on cpu"):
        check_compile("reduce-overhead", cpu, 1)
    with pytest.raises(ValueError, match=r"reduce-overhead under DDP \(2 processes\)"):
        check_compile("reduce-overhead", cuda, 2)
    assert check_compile("reduce-overhead", cuda, 1) == "reduce-overhead"
    assert resolve_channels_last("auto", cuda, "dsc") is True
    assert resolve_channels_last("auto", cpu, "dcls") is False
    assert resolve_channels_last("auto", cpu, "dsc") is False
    assert resolve_channels_last(True, cpu) is True and resolve_channels_last(False, cuda) is False
    with pytest.raises(ValueError, match=r"trainer.channels_last='yes'"):
        resolve_channels_last("yes", cpu)
    module = nn.Linear(2, 2)
    assert compile_module(module, "none") is module


def test_a_bad_compile_mode_stops_the_run_before_it_creates_anything(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"reduce-overhead captures CUDA graphs"):
        run(small_cfg(data_root, "trainer.compile=reduce-overhead"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_channels_last_run_keeps_the_format_and_matches_nchw(data_root, tmp_path):
    """trainer.channels_last=true trains the same weights as NCHW (to float reordering)."""
    a = run(small_cfg(data_root, "trainer.channels_last=true"), run_dir=tmp_path / "cl")
    b = run(small_cfg(data_root, "trainer.channels_last=false"), run_dir=tmp_path / "nchw")
    assert a["map"] == pytest.approx(b["map"], abs=1e-6)
    sa = torch.load(tmp_path / "cl" / "last.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "nchw" / "last.pt", weights_only=True)["model"]
    for k, v in sb.items():
        torch.testing.assert_close(sa[k], v, rtol=1e-4, atol=1e-5)
    convs = [v for v in sa.values() if v.dim() == 4 and v.shape[1] > 1 and v.shape[2] > 1]
    assert convs and all(
        v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() for v in convs
    )  # the downsampling convs, saved as trained


@pytest.mark.slow
def test_ddp_and_compile_under_torchrun_on_the_cpu(data_root, tmp_path):
    """Two gloo ranks, each compiling its DDP module: the run ends, keys stay the bare model's."""
    from conftest import tiny_overrides
    from test_distributed import torchrun

    over = tiny_overrides(
        data_root, "augment=none", "trainer.batch_size=1", "trainer.global_batch_size=2",
        "optim.lr_ref_batch=2", "trainer.epochs=1", "trainer.warmup_epochs=0",
        "trainer.max_eval_samples=2", "trainer.compile=default", *SMALL,
    )  # fmt: skip
    proc = torchrun(*over, f"hydra.run.dir={tmp_path / 'ddp'}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2 and results["device"]["compile"] == "default"
    keys = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    assert not [k for k in keys if "_orig_mod" in k or k.startswith("module.")]


@pytest.mark.slow
def test_compiled_inference_builds_kernels_from_the_current_weights(data_root, tmp_path):
    """--compile in evaluate: the metrics of eager evaluation; the compiled graph builds each
    DCLS kernel from the weights of the moment (no stale eval-mode cache)."""
    from dcls_audio.dcls import DclsNd
    from dcls_audio.evaluate import evaluate_checkpoint
    from dcls_audio.models.checkpoint import load_model
    from dcls_audio.train.accel import prepare_inference

    run(small_cfg(data_root), run_dir=tmp_path / "run")
    ckpt, files = tmp_path / "run" / "last.pt", [str(data_root / "eval.h5")]
    opts = {"device": "cpu", "progress": False}
    eager = evaluate_checkpoint(ckpt, files, **opts)
    compiled = evaluate_checkpoint(ckpt, files, compile="default", channels_last="true", **opts)
    for key in ("map", "mauc"):
        assert compiled[key] == pytest.approx(eager[key], abs=1e-6), key

    model = load_model(ckpt, device="cpu").model.eval()
    with torch.no_grad():  # layer scales of 1: the DCLS branches count in the output
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    net = prepare_inference(model, torch.device("cpu"), "true", "default")
    x = torch.randn(2, 1, 128, 401, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = net(x)
        torch.testing.assert_close(before, model(x), rtol=1e-4, atol=1e-5)
        layer = next(m for m in model.modules() if isinstance(m, DclsNd))
        layer.weight.copy_(torch.randn_like(layer.weight))  # not a scale: a LayerNorm follows
        after = net(x)
        torch.testing.assert_close(after, model(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, after, atol=1e-4)

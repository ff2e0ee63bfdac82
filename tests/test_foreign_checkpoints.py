"""Foreign checkpoints load into our models: outputs equal an independent reference model.

References (tests/reference_models.py) are timm models with a hand-made audio stem and the
`dcls` package's Dcls2d, saved in the official/authors' layout; nothing of dcls_audio builds them.
ConvFormer-S18 and FastViT-SA24 exist only at full size, so those cases are marked slow; the
ConvNeXt layout is tested fast on ConvNeXt-atto (same names as ConvNeXt-T).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib

import pytest
import timm
import torch
from conftest import cfgs, train_cfg
from omegaconf import OmegaConf
from reference_models import authors_file, official_state, reference_model

from dcls_audio.config import load_group
from dcls_audio.models import build_model, init_from_checkpoint
from dcls_audio.models.checkpoint import load_model
from dcls_audio.models.foreign import infer_architecture, read_source
from dcls_audio.train import run

logging.getLogger().setLevel(logging.ERROR)  # the dcls package warns on every CPU layer
ARCH = {  # the authors' --model names
    ("convnext_atto", True): "convnext_dcls_audio_tiny",
    ("convnext_t", True): "convnext_dcls_audio_tiny",
    ("convnext_t", False): "convnext_audio_tiny",
    ("convformer_s18", False): "convformer_audio_s18",
    ("convformer_s18", True): "convformer_dcls_audio_s18",
    ("fastvit_sa24", True): "fastvit_dcls_audio_sa24",
    ("fastvit_sa24", False): "fastvit_audio_sa24",
}


def close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """Largest error within ``rel`` of the largest reference output."""
    err = float((ours - ref).abs().max() / ref.abs().max())
    assert err <= rel, f"relative error {err:.2e} > {rel:.0e}"


def ours_for(model: str, dcls: bool, size: int = 23, count: int = 26, classes: int = 527):
    m, c = cfgs(model, "dcls_gauss" if dcls else "dsc", classes, drop_path_rate=0.0)
    if dcls:
        c = load_group("conv", "dcls_gauss", [f"conv.dilated_kernel_size={size}"])
        c["kernel_count"] = count
    return m, c


def check_audio_file(tmp_path, model: str, dcls: bool, size: int = 23, count: int = 26) -> None:
    ref = reference_model(model, dcls, size=size, count=count)
    path = tmp_path / f"{model}.pth"
    authors_file(path, model, ref, ARCH.get((model, dcls), "x"))
    net = build_model(*ours_for(model, dcls, size, count))
    report = init_from_checkpoint(net, path, "finetune")
    assert report.format == "official" and report.weights == "model_ema"
    assert report.skipped == {}
    bias_free_stem = model in ("convformer_s18", "fastvit_sa24")  # the authors' bias=False stem
    assert set(report.new) == ({"stem bias (zero)"} if bias_free_stem else set())
    x = torch.randn(2, 1, 64, 320)
    with torch.no_grad():
        close(net.eval()(x), ref(x))


@pytest.mark.parametrize("dcls", [False, True], ids=["dsc", "dcls"])
def test_authors_convnext_layout_loads_to_reference_outputs(tmp_path, dcls):
    check_audio_file(tmp_path, "convnext_atto", dcls)


@pytest.mark.slow
@pytest.mark.parametrize("dcls", [False, True], ids=["dsc", "dcls"])
@pytest.mark.parametrize("model", ["convnext_t", "convformer_s18", "fastvit_sa24"])
def test_authors_audio_checkpoints_full_size(tmp_path, model, dcls):
    """The four released files' architectures (and the DSC rows) at full size, 23x23 / 26."""
    check_audio_file(tmp_path, model, dcls)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["convformer_s18", "fastvit_sa24"])
def test_authors_metaformer_and_fastvit_layouts_small_kernels(tmp_path, model):
    check_audio_file(tmp_path, model, True, size=7, count=5)


def test_positions_are_flipped_from_the_dcls_package_convention(tmp_path):
    """The file's P[0] (width) lands in our P[1]; a square kernel would hide a missing flip."""
    ref = reference_model("convnext_atto", True, seed=3)
    path = tmp_path / "a.pth"
    torch.save({"model": official_state("convnext_atto", ref)}, path)
    net = build_model(*ours_for("convnext_atto", True))
    init_from_checkpoint(net, path, "finetune")
    file_p = ref.stages[1].blocks[0].conv_dw.P
    torch.testing.assert_close(net.stages[1].blocks[0].conv_dw.P, file_p.flip(0), rtol=0, atol=0)
    # an explicit, wrong format (our own convention) loads without the flip and changes outputs
    torch.save({"model": ref.state_dict()}, tmp_path / "timm.pth")
    other = build_model(*ours_for("convnext_atto", True))
    assert read_source(tmp_path / "timm.pth").format == "dcls-audio"
    init_from_checkpoint(other, tmp_path / "timm.pth", "finetune", fmt="dcls-audio")
    torch.testing.assert_close(other.stages[1].blocks[0].conv_dw.P, file_p, rtol=0, atol=0)


def test_load_model_reads_the_architecture_from_the_file(tmp_path):
    ref = reference_model("convnext_atto", True)
    path = tmp_path / "c.pth"
    authors_file(path, "convnext_atto", ref, "some_name")
    assert infer_architecture(read_source(path)) == ("convnext_atto", "dcls_gauss", 527)
    loaded = load_model(path)
    assert loaded.weights == "model_ema" and loaded.report.format == "official"
    assert len(loaded.class_names) == 527 and loaded.class_names[0] == "Speech"
    raw = load_model(path, prefer_ema=False)
    x = torch.randn(1, 1, 64, 320)
    with torch.no_grad():
        close(loaded.model(x), ref(x))
        assert not torch.allclose(raw.model(x), ref(x))  # the file's 'model' entry differs
    with pytest.raises(ValueError, match="holds DCLS layers.*choose conv=dcls_gauss"):
        load_model(path, model="convnext_atto", conv="dsc")


def test_the_args_namespace_is_allowed_and_nothing_else(tmp_path):
    ref = reference_model("convnext_atto", False)
    state = official_state("convnext_atto", ref)
    ok = tmp_path / "ok.pth"
    torch.save({"model": state, "args": argparse.Namespace(model="x", lr=1.0)}, ok)
    assert read_source(ok).author_model == "x"
    bad = tmp_path / "bad.pth"
    torch.save(
        {"model": state, "args": argparse.Namespace(output_dir=pathlib.PurePosixPath("/"))}, bad
    )
    with pytest.raises(ValueError, match="bad.pth: cannot be loaded safely"):
        read_source(bad)


def test_imagenet_dcls_checkpoint_initialises_a_dcls_model(tmp_path):
    """The DCLS authors' ImageNet files: 3-channel 4x4 stem and 1000 classes skipped, rest loads."""
    torch.manual_seed(0)
    ref = timm.create_model("convnext_atto", num_classes=1000)  # image stem, image head
    from reference_models import PkgDcls2d  # noqa: F401  (the package the authors' files use)

    img = reference_model("convnext_atto", True, num_classes=1000)
    img.stem[0] = ref.stem[0]  # back to the 3-channel 4x4 image stem
    path = tmp_path / "convnext_dcls_gauss_atto_1k_224_ema.pth"
    torch.save({"model": official_state("convnext_atto", img), "epoch": 300}, path)
    m, c = ours_for("convnext_atto", True)
    net = build_model({**m, "pretrained": str(path), "init": "imagenet"}, c)
    report = net.build_info["pretrained"]
    assert report.skipped == {
        "image stem": ["stem.0.bias", "stem.0.weight"],
        "classifier": ["head.fc.bias", "head.fc.weight"],
    }
    assert report.new == {
        "audio stem": ["stem.0.bias", "stem.0.weight"],
        "classifier": ["head.fc.bias", "head.fc.weight"],
    }
    own = net.state_dict()
    for key, value in img.state_dict().items():
        if key.startswith(("stem.0.", "head.fc.")):
            continue
        want = value.flip(0) if key.endswith((".P", ".SIG")) else value
        torch.testing.assert_close(own[key], want, rtol=0, atol=0, msg=key)


def test_finetune_replaces_the_head_only_when_the_class_count_differs(tmp_path):
    ref = reference_model("convnext_atto", True)
    path = tmp_path / "audio.pth"
    authors_file(path, "convnext_atto", ref, "convnext_dcls_audio_tiny")
    net = build_model(*ours_for("convnext_atto", True, classes=10))
    report = init_from_checkpoint(net, path, "finetune")
    assert report.new == {"classifier": ["head.fc.bias", "head.fc.weight"]}
    assert report.skipped == {"classifier": ["head.fc.bias", "head.fc.weight"]}
    torch.testing.assert_close(net.stem[0].weight, ref.stem[0].weight, rtol=0, atol=0)


def test_our_own_checkpoint_fine_tunes(tmp_path):
    m, c = ours_for("convnext_atto", True, size=7, count=5, classes=16)
    src = build_model(m, c)
    path = tmp_path / "last.pt"
    torch.save({"model": src.state_dict(), "ema": None, "config": {"model": m, "conv": c}}, path)
    net = build_model({**m, "pretrained": str(path), "init": "finetune"}, c)
    report = net.build_info["pretrained"]
    assert report.format == "dcls-audio" and report.weights == "model" and report.new == {}
    assert net.build_info["init_record"]["mode"] == "finetune"


def test_shared_positions_that_differ_in_the_file_are_an_error(tmp_path):
    ref = reference_model("convnext_atto", True)
    state = official_state("convnext_atto", ref)
    state["stages.0.1.dwconv.P"] = state["stages.0.1.dwconv.P"] + 1.0
    path = tmp_path / "unshared.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="shared parameter.*share_positions=false"):
        init_from_checkpoint(build_model(*ours_for("convnext_atto", True)), path, "finetune")


def test_tagger_accepts_an_authors_checkpoint(tmp_path):
    from dcls_audio.data import LogMelFrontend
    from dcls_audio.tag import load_tagger

    ref = reference_model("convnext_atto", True)
    path = tmp_path / "convnext_dcls_audio_tiny.pth"
    authors_file(path, "convnext_atto", ref, "convnext_dcls_audio_tiny")
    tagger = load_tagger(path)
    assert tagger.weights == "model_ema" and len(tagger.class_names) == 527
    wave = 0.1 * torch.randn(2, 320000)
    with torch.no_grad():
        want = torch.sigmoid(ref(LogMelFrontend().eval()(wave)))
    close(tagger.probabilities(wave), want)


def test_a_run_records_its_init_in_results_json(synthetic_root, tmp_path):
    """model.init=finetune from one of our checkpoints: results.json says where weights began."""
    base = ("trainer.batch_size=2", "trainer.global_batch_size=4", "trainer.epochs=1")
    base += ("trainer.warmup_epochs=0", "optim.lr_ref_batch=4", "trainer.max_steps=1")
    cfg = train_cfg(synthetic_root(8), *base)
    src = build_model(cfg.model, cfg.conv)
    ckpt = tmp_path / "start.pt"
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"model": src.state_dict(), "config": config}, ckpt)
    cfg = train_cfg(synthetic_root(8), *base, "model.init=finetune", f"model.pretrained={ckpt}")
    run(cfg, run_dir=tmp_path / "run")
    init = json.loads((tmp_path / "run" / "results.json").read_text())["init"]
    assert init["mode"] == "finetune" and init["pretrained"] == str(ckpt)
    assert "init=finetune" in init["report"] and "new in the model: none" in init["report"]


def check_official_imagenet(tmp_path, model: str) -> None:
    """An official-layout ImageNet DSC file (image stem, 1000 classes) initialises our model."""
    from reference_models import REF

    torch.manual_seed(0)
    img = timm.create_model(REF[model][0], num_classes=1000)
    path = tmp_path / "official_1k.pth"
    torch.save({"model": official_state(model, img)}, path)
    m, c = ours_for(model, False)
    net = build_model({**m, "pretrained": str(path), "init": "imagenet"}, c)
    report = net.build_info["pretrained"]
    image_stem, head = (
        ("stem.0", "head.fc") if model.startswith("convnext") else ("stem.conv", "head.fc.fc2")
    )
    assert set(report.skipped) == {"image stem", "classifier"}
    assert all(k.startswith(image_stem + ".") for k in report.skipped["image stem"])
    assert report.skipped["classifier"] == [head + ".bias", head + ".weight"]
    own = net.state_dict()
    for key, value in img.state_dict().items():
        if key.startswith((image_stem + ".", head + ".")):
            continue
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


def test_official_convnext_imagenet_file(tmp_path):
    check_official_imagenet(tmp_path, "convnext_atto")


@pytest.mark.slow
def test_official_metaformer_imagenet_file(tmp_path):
    """ConvFormer-S18: MetaFormer names, MLP head (only its last layer is the classifier)."""
    check_official_imagenet(tmp_path, "convformer_s18")

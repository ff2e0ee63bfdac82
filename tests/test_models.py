"""Model zoo: audio stem, DSC/DCLS conv choice, parameter counts, FastViT reparameterize.

Full-size forward+backward of the DCLS models costs 20-70 s each on two CPU cores (PyTorch's CPU
depthwise-conv weight gradient at 23x23), so those are marked slow; everything else is fast.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import timm
import torch
from conftest import cfgs
from omegaconf import OmegaConf
from timm.layers import LayerNorm2d
from timm.models.fastvit import RepConditionalPosEnc
from timm.models.metaformer import LayerNorm2dNoBias
from torch import nn

from dcls_audio.dcls import Dcls2d, DclsNd, replace_depthwise
from dcls_audio.models import MODEL_NAMES, build_model, list_models, reparameterize
from dcls_audio.models.stem import model_family, stem_conv_name

ROOT = Path(__file__).resolve().parent.parent
PAPER = ("convnext_t", "convformer_s18", "fastvit_sa24")
CONVS = ("dsc", "dcls_gauss", "dcls_bilinear")
SWAPPED = {"convnext_t": 18, "convformer_s18": 18, "fastvit_sa24": 25, "convnext_atto": 12}
PAPER_PARAMS = {"convnext_t": 28.6e6, "convformer_s18": 26.8e6, "fastvit_sa24": 21.5e6}
STEM_WIDTH = {"convnext_t": 96, "convformer_s18": 64, "fastvit_sa24": 64, "convnext_atto": 40}
# width of the features entering the last linear layer (hand-read from the timm model definitions)
HEAD_FEATURES = {
    "convnext_t": 768,
    "convformer_s18": 2048,
    "fastvit_sa24": 1024,
    "convnext_atto": 320,
}
# blocks per stage, and the depthwise-conv channel count of each stage
DEPTHS = {
    "convnext_t": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convformer_s18": ((3, 3, 9, 3), (128, 256, 640, 1024)),  # SepConv expands x2
    "fastvit_sa24": ((4, 4, 12, 5), (64, 128, 256, 512)),  # + RepCPE in the last stage
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
}
INPUT = (2, 1, 128, 1001)


@functools.cache
def meta_model(model: str, conv: str, num_classes: int = 527) -> nn.Module:
    """Model built on the meta device: structure and counts only, no memory, no init cost."""
    with torch.device("meta"):
        return build_model(*cfgs(model, conv, num_classes))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared P/SIG counted once


def depthwise7(model: nn.Module) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.groups == m.in_channels == m.out_channels
        and m.kernel_size == (7, 7)
    ]


def stem_conv(model: nn.Module) -> nn.Module:
    return model.get_submodule(stem_conv_name(model_family(model)))


# ---------------------------------------------------------------- forward + backward


def _forward_backward(model: nn.Module, shape, num_classes: int) -> None:
    model.train()
    x = torch.randn(shape)
    y = model(x)
    assert y.shape == (shape[0], num_classes)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    dcls = [m for m in model.modules() if isinstance(m, DclsNd)]
    for layer in dcls:  # positions and weights of every DCLS layer learn
        assert layer.P.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0
        if layer.version == "gauss":
            assert layer.SIG.grad.abs().sum() > 0


def _slow_if_dcls(model: str, conv: str):
    return pytest.param(model, conv, marks=[pytest.mark.slow] if conv != "dsc" else [])


@pytest.mark.parametrize(
    ("model", "conv"), [_slow_if_dcls(m, c) for m in PAPER + ("convnext_atto",) for c in CONVS]
)
def test_forward_backward_full_input(model, conv):
    # no drop path: with it a whole block can be dropped for both clips and get no gradient
    net = build_model(*cfgs(model, conv, num_classes=527, drop_path_rate=0.0))
    _forward_backward(net, INPUT, 527)


@pytest.mark.parametrize("conv", ("dcls_gauss", "dcls_bilinear"))
def test_forward_backward_small_dcls(conv):
    net = build_model(*cfgs("convnext_atto", conv, num_classes=16, drop_path_rate=0.0))
    _forward_backward(net, (2, 1, 128, 160), 16)


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("conv", ("dcls_gauss", "dcls_bilinear"))
def test_swaps_every_depthwise_7x7(model, conv):
    dsc, dcls = meta_model(model, "dsc"), meta_model(model, conv)
    targets = depthwise7(dsc)
    assert len(targets) == SWAPPED[model]
    assert dcls.build_info["swapped"] == targets
    assert depthwise7(dcls) == []
    swapped = {n for n, m in dcls.named_modules() if isinstance(m, Dcls2d)}
    assert swapped == set(targets)
    version = "gauss" if conv == "dcls_gauss" else "bilinear"
    for name in targets:
        layer, old = dcls.get_submodule(name), dsc.get_submodule(name)
        assert layer.version == version and layer.kernel_count == 26
        assert layer.dilated_kernel_size == (23, 23) and tuple(layer.padding) == (11, 11)
        assert (layer.bias is None) == (old.bias is None)
    assert meta_model(model, "dsc").build_info["swapped"] == []


def test_fastvit_swaps_mlp_convs_and_the_positional_encoding():
    names = meta_model("fastvit_sa24", "dcls_gauss").build_info["swapped"]
    assert sum(n.endswith(".mlp.conv.conv") for n in names) == 4 + 4 + 12 + 4
    assert [n for n in names if "pos_emb" in n] == ["stages.3.pos_emb.pos_enc"]


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("conv", CONVS)
def test_audio_stem(model, conv):
    net = meta_model(model, conv)
    stem = stem_conv(net)
    assert type(stem) is nn.Conv2d
    assert stem.in_channels == 1 and stem.out_channels == STEM_WIDTH[model]
    assert stem.kernel_size == (2, 16) and stem.stride == (2, 16) and stem.padding == (0, 0)
    assert not any(isinstance(m, DclsNd) for m in net.stem.modules())
    if model.startswith("convnext"):
        assert len(net.stem) == 2 and type(net.stem[1]) is LayerNorm2d and net.stem[0] is stem
    elif model == "convformer_s18":
        assert type(net.stem.norm) is LayerNorm2dNoBias and net.stem.norm.bias is None
        assert net.stem.conv is stem
    else:  # FastViT: the MobileOne stem is gone, the conv is the whole stem
        assert net.stem is stem


@pytest.mark.parametrize("model", ("convnext_atto", "convformer_s18", "fastvit_sa24"))
def test_stem_output_and_init(model):
    torch.manual_seed(0)
    net = build_model(*cfgs(model, "dsc"))
    stem = stem_conv(net)
    x = torch.randn(2, 1, 128, 1001)
    assert net.stem(x).shape == (2, STEM_WIDTH[model], 64, 62)
    w = stem.weight.detach()
    if model == "fastvit_sa24":  # FastViT leaves convs at PyTorch's default kaiming-uniform init
        bound = 1 / (2 * 16) ** 0.5
        assert w.abs().max() <= bound and w.std() > 0.5 * bound / 3**0.5
    else:  # trunc_normal(std=0.02), zero bias, as timm's ConvNeXt / MetaFormer init
        assert w.abs().max() <= 2.0 and abs(w.std().item() - 0.02) < 0.004
        assert torch.all(stem.bias == 0)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_positions_shared_per_stage(model):
    net = meta_model(model, "dcls_gauss")
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, DclsNd)]
    depths, widths = DEPTHS[model]
    groups: dict[int, list[str]] = {}
    for name, layer in layers:
        groups.setdefault(id(layer.P), []).append(name)
        assert id(layer.SIG) != id(layer.P)
    assert len(groups) == 4
    assert len({id(m.SIG) for _, m in layers}) == 4
    for stage, members in enumerate(groups.values()):
        assert {n.split(".")[1] for n in members} == {str(stage)}
        assert len(members) == depths[stage]
        assert net.get_submodule(members[0]).P.shape == (2, widths[stage], 1, 26)
    listed = [n for n, _ in net.named_parameters() if n.endswith((".P", ".SIG"))]
    assert len(listed) == 8  # each shared Parameter is listed once


def test_positions_not_shared_when_disabled():
    m, c = cfgs("convnext_t", "dcls_gauss")
    c["share_positions"] = False
    with torch.device("meta"):
        net = build_model(m, c)
    assert len({id(x.P) for x in net.modules() if isinstance(x, DclsNd)}) == 18


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("model", PAPER)
def test_param_counts_match_paper_and_dcls_is_iso_params(model):
    dsc, gauss = meta_model(model, "dsc", 1000), meta_model(model, "dcls_gauss", 1000)
    assert n_params(gauss) <= n_params(dsc)
    assert n_params(meta_model(model, "dcls_gauss")) <= n_params(meta_model(model, "dsc"))
    for net in (dsc, gauss):
        assert abs(n_params(net) / PAPER_PARAMS[model] - 1) < 0.02


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_param_count_differences_by_hand(model):
    dsc = n_params(meta_model(model, "dsc"))
    # 527 vs 1000 outputs: only the last linear layer changes
    assert n_params(meta_model(model, "dsc", 1000)) - dsc == 473 * (HEAD_FEATURES[model] + 1)
    # DSC 7x7 -> DCLS: 49 -> 26 weights per channel, plus one shared P (and SIG) per stage
    depths, widths = DEPTHS[model]
    swapped_channels = sum(d * w for d, w in zip(depths, widths, strict=True))
    positions = sum(2 * w * 26 for w in widths)
    gauss = n_params(meta_model(model, "dcls_gauss"))
    bilinear = n_params(meta_model(model, "dcls_bilinear"))
    assert dsc - gauss == (49 - 26) * swapped_channels - 2 * positions
    assert dsc - bilinear == (49 - 26) * swapped_channels - positions


# ---------------------------------------------------------------- configuration


def test_config_files_and_names():
    assert list_models() == list(MODEL_NAMES)
    assert set(MODEL_NAMES) == {p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")}
    assert set(CONVS) == {p.stem for p in (ROOT / "configs" / "conv").glob("*.yaml")}
    for name in MODEL_NAMES:
        m, _ = cfgs(name, "dsc", num_classes=33)
        assert m["name"] == name and m["num_classes"] == 33 and m["stem_kernel"] == [2, 16]
        assert m["in_chans"] == 1 and m["pretrained"] is None and timm.is_model(m["timm_name"])
    gauss, bil = cfgs("convnext_t", "dcls_gauss")[1], cfgs("convnext_t", "dcls_bilinear")[1]
    for c, version in ((gauss, "gauss"), (bil, "bilinear")):
        assert (c["type"], c["version"], c["share_positions"]) == ("dcls", version, True)
        assert (c["kernel_size"], c["dilated_kernel_size"], c["kernel_count"]) == (7, 23, 26)
    assert cfgs("convnext_t", "dsc")[1]["type"] == "dsc"


def test_dictconfig_input_and_drop_path():
    root = OmegaConf.create({"data": {"num_classes": 7}})
    root.model = OmegaConf.load(ROOT / "configs" / "model" / "convnext_atto.yaml")
    root.conv = OmegaConf.load(ROOT / "configs" / "conv" / "dsc.yaml")
    root.model.drop_path_rate = 0.3
    with torch.device("meta"):
        net = build_model(root.model, root.conv)
    assert net.num_classes == 7 and net.head.fc.out_features == 7
    rates = [m.drop_prob for m in net.modules() if type(m).__name__ == "DropPath"]
    assert max(rates) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("model_over", "conv_over", "match"),
    [
        ({"name": "resnet50"}, {}, r"valid names: \['convnext_t', 'convformer_s18'"),
        ({"name": None}, {}, "valid names"),
        ({"timm_name": "no_such_net"}, {}, "not a timm model"),
        ({"timm_name": "resnet18"}, {}, "unsupported model class ResNet"),
        ({"drop_path": 0.1}, {}, r"unknown key\(s\) \['drop_path'\]"),
        ({"num_classes": 0}, {}, "num_classes must be an integer >= 1"),
        ({"timm_kwargs": {"bogus": 1}}, {}, r"model.timm_kwargs=\{'bogus': 1\} not accepted"),
        ({"timm_kwargs": {"num_classes": 3}}, {}, r"may not set \['num_classes'\]"),
        ({"timm_kwargs": [1]}, {}, "timm_kwargs must be a mapping"),
        ({"drop_path_rate": "high"}, {}, "drop_path_rate must be a number in"),
        ({"drop_path_rate": 1.0}, {}, r"drop_path_rate must be in \[0, 1\)"),
        ({"stem_kernel": [2]}, {}, "stem_kernel must be two positive ints"),
        ({}, {"type": "dcls2"}, r"conv.type='dcls2'; expected one of \['dsc', 'dcls'\]"),
        ({}, {"type": "dcls", "version": "v1"}, "version"),
        ({}, {"type": "dcls", "kernel_size": 5}, "no depthwise 5x5 Conv2d"),
        ({}, {"type": "dcls", "kernel_count": 0}, "kernel_count must be an integer >= 1"),
        ({}, {"type": "dcls", "position_init": "gauss"}, "position_init='gauss'; expected one"),
        ({}, {"dilated_kernel_sise": 11}, r"unknown key\(s\) \['dilated_kernel_sise'\]"),
    ],
)
def test_bad_config_errors(model_over, conv_over, match):
    m, c = cfgs("convnext_atto", "dcls_gauss" if conv_over.get("type") == "dcls" else "dsc")
    m.update(model_over)
    c.update(conv_over)
    with pytest.raises((ValueError, TypeError), match=match), torch.device("meta"):
        build_model(m, c)


def test_dsc_ignores_dcls_only_keys():
    """An experiment may set DCLS keys for both convs (the demo does); DSC drops them."""
    m, c = cfgs("convnext_atto", "dsc")
    c.update(dilated_kernel_size=11, position_init="uniform", kernel_count=26)
    net = build_model(m, c)
    assert net.build_info["conv"] == "dsc" and net.build_info["swapped"] == []
    assert sum(isinstance(x, torch.nn.Conv2d) and x.groups > 1 for x in net.modules()) == 12


def test_timm_kwargs_reach_the_timm_constructor():
    m, c = cfgs("convnext_atto", "dcls_gauss")
    m["timm_kwargs"] = {"ls_init_value": 0.25}
    net = build_model(m, c)
    gammas = [b.gamma for s in net.stages for b in s.blocks]
    assert len(gammas) == 12 and all(torch.all(g == 0.25) for g in gammas)


# ---------------------------------------------------------------- re-parameterisation


def _randomise(net: nn.Module) -> None:
    """Move positions off-grid and give BatchNorms non-trivial statistics."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".P"):
                p.normal_(0.0, 3.0)
            elif name.endswith(".SIG"):
                p.uniform_(0.0, 1.0)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
            elif isinstance(m, DclsNd):
                m.weight.normal_(0.0, 0.1)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)


def test_repcpe_with_dcls_fuses_to_identity_plus_kernel():
    torch.manual_seed(1)
    cpe = RepConditionalPosEnc(16, spatial_shape=(7, 7))
    host = nn.Sequential(cpe)
    assert replace_depthwise(host, dilated_kernel_size=9, kernel_count=5) == ["0.pos_enc"]
    _randomise(host)
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        expected = x + cpe.pos_enc(x)  # the training-time definition, computed directly
        fused = reparameterize(host)
        got = fused(x)
    conv = fused[0].reparam_conv
    assert type(conv) is nn.Conv2d and conv.kernel_size == (9, 9) and conv.groups == 16
    assert not hasattr(fused[0], "pos_enc")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert hasattr(cpe, "pos_enc")  # not in place by default


@pytest.mark.parametrize("conv", ("dsc", "dcls_gauss"))
def test_fastvit_reparameterize_keeps_outputs(conv):
    torch.manual_seed(0)
    net = build_model(*cfgs("fastvit_sa24", conv, drop_path_rate=0.0))
    _randomise(net)
    net.eval()
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        feats = net.forward_features(x)
        logits = net.forward_head(feats)
        fused = reparameterize(net)
        assert not any(hasattr(m, "pos_enc") for m in fused.modules())
        assert all(
            m.reparam_conv is not None for m in fused.modules() if hasattr(m, "reparam_conv")
        )
        fused_feats = fused.forward_features(x)
        torch.testing.assert_close(fused_feats, feats, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.forward_head(fused_feats), logits, rtol=0, atol=1e-5)
        if conv != "dsc":
            assert sum(isinstance(m, DclsNd) for m in fused.modules()) == 24  # ConvMlp convs
            dense = reparameterize(net, dense=True)
            assert not any(isinstance(m, DclsNd) for m in dense.modules())
            torch.testing.assert_close(dense.forward_features(x), feats, rtol=1e-5, atol=1e-5)

"""Reference models and foreign checkpoint layouts built without dcls_audio's code.

A reference model is timm's model with the paper's audio stem put in by hand and every depthwise
7x7 conv replaced by the `dcls` package's ``Dcls2d`` (positions shared per channel count, as the
authors' ``replace_depthwise_dcls``), with random, non-trivial values everywhere. Its state dict
is renamed by hand from timm's names to the official layout the authors' code saves
(ConvNeXt ``downsample_layers``, MetaFormer ``downsample_layers``, FastViT ``network``).
"""

from __future__ import annotations

import re

import timm
import torch
from DCLS.construct.modules import Dcls2d as PkgDcls2d
from torch import nn

# zoo name -> (timm name, stem attribute path, stem width, authors' stem has a bias)
REF = {
    "convnext_atto": ("convnext_atto", "stem.0", 40, True),
    "convnext_t": ("convnext_tiny", "stem.0", 96, True),
    "convformer_s18": ("convformer_s18", "stem.conv", 64, False),
    "fastvit_sa24": ("fastvit_sa24", "stem", 64, False),
}


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def reference_model(
    name: str, dcls: bool, num_classes: int = 527, seed: int = 0, size: int = 23, count: int = 26
) -> nn.Module:
    """timm model + hand-made audio stem + the `dcls` package's Dcls2d; random values; eval."""
    torch.manual_seed(seed)
    timm_name, stem, width, bias = REF[name]
    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    _set(model, stem, nn.Conv2d(1, width, (2, 16), stride=(2, 16), bias=bias))
    if dcls:
        shared: dict[int, PkgDcls2d] = {}
        for mname, m in list(model.named_modules()):
            if (
                isinstance(m, nn.Conv2d)
                and m.groups == m.in_channels == m.out_channels
                and m.kernel_size == (7, 7)
            ):
                c = m.in_channels
                layer = PkgDcls2d(
                    c, c, kernel_count=count, dilated_kernel_size=size, padding=size // 2,
                    groups=c, bias=m.bias is not None, version="gauss", use_implicit_gemm=False,
                )  # fmt: skip
                owner = shared.setdefault(c, layer)
                if owner is not layer:
                    layer.P, layer.SIG = owner.P, owner.SIG
                _set(model, mname, layer)
    with torch.no_grad():
        seen = set()
        for pname, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            leaf = pname.rpartition(".")[2]
            if leaf == "P":
                p.copy_((torch.randn_like(p) * 4).clamp(-(size // 2), size // 2))
            elif leaf == "SIG":
                p.copy_(torch.rand_like(p) * 2)
            elif leaf in ("gamma", "scale") or "layer_scale" in pname:
                p.copy_(0.3 + 0.05 * torch.randn_like(p))
            elif p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (1.0 / p[0].numel()) ** 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(1 + 0.2 * torch.rand_like(m.running_var))
    return model.eval()


def _convnext_official(k: str, v: torch.Tensor) -> tuple[str, torch.Tensor]:
    k = re.sub(r"^stem\.", "downsample_layers.0.", k)
    k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
    k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
    k = k.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc1.", ".pwconv1.")
    k = k.replace(".mlp.fc2.", ".pwconv2.")
    if k.startswith("head.norm."):
        k = k.replace("head.norm.", "norm.")
    k = k.replace("head.fc.", "head.")
    if ".pwconv" in k and v.ndim == 4:  # convnext_atto's 1x1 convs are Linear layers there
        v = v.flatten(1)
    return k, v


def _metaformer_official(k: str, v: torch.Tensor) -> tuple[str, torch.Tensor]:
    k = k.replace("stem.conv.", "downsample_layers.0.conv.")
    k = k.replace("stem.norm.", "downsample_layers.0.post_norm.")
    k = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm.", k)
    k = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv.", k)
    k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
    k = k.replace("head.norm.", "norm.").replace("head.fc.", "head.")
    return k, v


# FastViT-SA24: timm stage -> the official flat `network` index of its blocks and downsample
_FASTVIT_BLOCKS = {0: 0, 1: 2, 2: 4, 3: 7}
_FASTVIT_DOWN = {1: 1, 2: 3, 3: 5}


def _fastvit_official(k: str, v: torch.Tensor) -> tuple[str, torch.Tensor]:
    m = re.match(r"^stages\.(\d+)\.(blocks|downsample|pos_emb)\.(.*)$", k)
    if m:
        stage, part, rest = int(m.group(1)), m.group(2), m.group(3)
        if part == "blocks":
            k = f"network.{_FASTVIT_BLOCKS[stage]}.{rest}"
        elif part == "downsample":
            k = f"network.{_FASTVIT_DOWN[stage]}.{rest}"
        else:
            k = "network.6." + rest.replace("pos_enc.", "pe.")
    k = re.sub(r"^stem\.", "patch_embed.", k)
    k = k.replace("conv_kxk", "rbr_conv").replace("conv_scale", "rbr_scale")
    k = k.replace(".identity.", ".rbr_skip.").replace("large_conv", "lkb_origin")
    k = k.replace("final_conv.", "conv_exp.").replace(".mlp.", ".convffn.")
    k = k.replace("se.fc1", "se.reduce").replace("se.fc2", "se.expand")
    k = re.sub(r"layer_scale(_\d)?\.gamma$", r"layer_scale\1", k)
    k = k.replace("head.fc.", "head.")
    return k, v


_OFFICIAL = {
    "convnext_atto": _convnext_official,
    "convnext_t": _convnext_official,
    "convformer_s18": _metaformer_official,
    "fastvit_sa24": _fastvit_official,
}


def official_state(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The reference model's state dict in the official (authors') names and shapes."""
    out = {}
    for k, v in model.state_dict().items():
        k2, v2 = _OFFICIAL[name](k, v)
        assert k2 not in out, k2
        out[k2] = v2.clone()
    return out


def authors_file(path, name: str, model: nn.Module, arch: str, ema: bool = True) -> None:
    """Save as the authors' main.py does: model, model_ema, optimizer, epoch, scaler, args."""
    import argparse

    state = official_state(name, model)
    obj = {
        "model": {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-6, "params": [0, 1]}]},
        "epoch": 59,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": argparse.Namespace(model=arch, nb_classes=527, drop_path=0.4, lr=4e-3),
    }
    if ema:
        obj["model_ema"] = state
    else:
        obj["model"] = state
    torch.save(obj, path)

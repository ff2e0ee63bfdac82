"""The common audio stem: one patchifying Conv2d in place of each family's image stem.

The paper (Khalfaoui-Hassani et al., 2023, §3.2) feeds every model the same coarse stem,
``Conv2d(in_chans, C0, kernel (2, 16), stride (2, 16))``, which turns a 128 × 1001 log-mel
spectrogram into 64 × 62 feature maps. What follows the conv depends on the family:

- ConvNeXt: ``stem = Sequential(conv, LayerNorm2d)``; the conv ``stem.0`` is replaced, the norm
  kept.
- ConvFormer (timm ``MetaFormer``): ``stem = Stem(conv, LayerNorm2dNoBias)``; ``stem.conv`` is
  replaced, the bias-free norm kept.
- FastViT: the whole MobileOne stem (three re-parameterisable blocks) becomes the conv alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import trunc_normal_
from timm.models.convnext import ConvNeXt
from timm.models.fastvit import FastVit
from timm.models.metaformer import MetaFormer
from torch import nn

FAMILIES = ("convnext", "metaformer", "fastvit")


def model_family(model: nn.Module) -> str:
    """Return the stem family ("convnext", "metaformer" or "fastvit") of a timm model."""
    if isinstance(model, ConvNeXt):
        return "convnext"
    if isinstance(model, MetaFormer):
        return "metaformer"
    if isinstance(model, FastVit):
        return "fastvit"
    raise TypeError(
        f"unsupported model class {type(model).__name__}: the audio stem is defined for timm's "
        f"ConvNeXt, MetaFormer (ConvFormer) and FastVit only"
    )


def stem_conv_name(family: str) -> str:
    """Qualified name of the audio stem conv inside a model of ``family``."""
    names = {"convnext": "stem.0", "metaformer": "stem.conv", "fastvit": "stem"}
    if family not in names:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    return names[family]


def _stem_width(model: nn.Module, family: str) -> int:
    """Channel count C0 the first stage expects from the stem."""
    if family == "convnext":
        return model.stem[0].out_channels
    if family == "metaformer":
        return model.stem.conv.out_channels
    # FastViT's stem ends with a 1x1 MobileOneBlock; its output width is the first stage width
    return model.stem[-1].out_chs


def replace_stem(
    model: nn.Module,
    kernel: Sequence[int] = (2, 16),
    in_chans: int = 1,
) -> nn.Conv2d:
    """Put the audio stem ``Conv2d(in_chans, C0, kernel, stride=kernel)`` in ``model``; return it.

    The new conv is initialised as the family's own ``_init_weights`` would: truncated normal
    (std 0.02) with zero bias for ConvNeXt and MetaFormer; PyTorch's default conv init for FastViT,
    whose ``_init_weights`` only touches ``nn.Linear``.
    """
    kernel = tuple(int(k) for k in kernel)
    if len(kernel) != 2 or min(kernel) < 1:
        raise ValueError(f"stem_kernel must be two positive ints (height, width), got {kernel}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    family = model_family(model)
    width = _stem_width(model, family)
    if family == "convnext":
        bias = model.stem[0].bias is not None
    elif family == "metaformer":
        bias = model.stem.conv.bias is not None
    else:
        bias = True  # nothing follows the conv in FastViT, so it keeps its own bias
    conv = nn.Conv2d(in_chans, width, kernel_size=kernel, stride=kernel, bias=bias)
    if family in ("convnext", "metaformer"):
        trunc_normal_(conv.weight, std=0.02)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    if family == "convnext":
        model.stem[0] = conv
    elif family == "metaformer":
        model.stem.conv = conv
    else:
        model.stem = conv
    model.in_chans = in_chans
    return conv

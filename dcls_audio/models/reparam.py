"""Inference re-parameterisation (FastViT's RepVGG-style branch fusion) that works with DCLS.

timm's ``reparameterize_model`` calls ``reparameterize()`` on every module that has one. FastViT's
``RepConditionalPosEnc`` computes ``x + pos_enc(x)`` during training and fuses the identity into
the conv kernel for inference; its ``reparameterize`` reads ``pos_enc.weight`` as a dense
(C, 1, 7, 7) kernel, which a DCLS ``pos_enc`` does not have (its weight is (C, 1, count)). Here
that module is fused from the *constructed* DCLS kernel instead: a dense depthwise conv of the
dilated size whose kernel is the DCLS kernel plus a 1 at the centre tap. Every other module goes
through timm's own logic unchanged. DCLS layers elsewhere stay DCLS layers (in eval mode they
build their kernel once and reuse it) unless ``dense=True`` turns them into plain convs too.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from timm.models.fastvit import RepConditionalPosEnc
from torch import nn

from dcls_audio.dcls import DclsNd


def _as_tuple(value, ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * ndim


@torch.no_grad()
def _fuse_dcls_cpe(cpe: RepConditionalPosEnc) -> None:
    """RepCPE ``x + pos_enc(x)`` with a DCLS ``pos_enc`` → one dense depthwise conv."""
    conv = cpe.pos_enc.to_conv()
    if _as_tuple(conv.stride, 2) != (1, 1) or conv.in_channels != conv.out_channels:
        raise ValueError(
            "RepConditionalPosEnc fusion needs a stride-1 conv with in == out channels"
        )
    padding = _as_tuple(conv.padding, 2)
    size = conv.weight.shape[2:]
    if any(not 0 <= p < s for p, s in zip(padding, size, strict=True)):
        raise ValueError(f"cannot fold the identity: padding {padding} outside kernel {size}")
    per_group = conv.in_channels // conv.groups
    # output pixel i reads input pixel i through tap `padding`: that tap carries the identity
    out = torch.arange(conv.out_channels, device=conv.weight.device)
    conv.weight[out, out % per_group, padding[0], padding[1]] += 1.0
    if conv.bias is None:  # timm's fused conv always has a bias; keep its state_dict layout
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype))
    cpe.reparam_conv = conv
    del cpe.pos_enc


def reparameterize(model: nn.Module, inplace: bool = False, dense: bool = False) -> nn.Module:
    """Fuse training-time branches for inference (timm semantics), DCLS layers included.

    With ``dense=True`` every remaining DCLS layer also becomes a plain conv holding its
    constructed kernel (no dependency on the DCLS code at inference). Call on a model in eval mode:
    BatchNorm statistics are folded into the fused convs.
    """
    if not inplace:
        model = deepcopy(model)

    def fuse(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, RepConditionalPosEnc) and isinstance(
                getattr(child, "pos_enc", None), DclsNd
            ):
                _fuse_dcls_cpe(child)
            elif dense and isinstance(child, DclsNd):
                setattr(module, name, child.to_conv())
                continue
            elif hasattr(child, "fuse"):
                setattr(module, name, child.fuse())
            elif hasattr(child, "reparameterize"):
                child.reparameterize()
            elif hasattr(child, "switch_to_deploy"):
                child.switch_to_deploy()
            fuse(child)

    fuse(model)
    return model

"""Swap a model's depthwise convolutions for DCLS layers, and helpers for training with them."""

from __future__ import annotations

import torch
from torch import nn

from .construct import check_version
from .layers import Dcls2d, DclsNd

__all__ = ["replace_depthwise", "clamp_dcls", "is_dcls_position"]

POSITION_NAMES = ("P", "SIG")


def _is_depthwise(module: nn.Module, kernel_size: int) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == module.in_channels == module.out_channels
        and tuple(module.kernel_size) == (kernel_size, kernel_size)
        and tuple(module.dilation) == (1, 1)
    )


POSITION_INITS = ("normal", "uniform")


def replace_depthwise(
    model: nn.Module,
    kernel_size: int = 7,
    dilated_kernel_size: int = 23,
    kernel_count: int = 26,
    version: str = "gauss",
    share_positions: bool = True,
    position_init: str = "normal",
) -> list[str]:
    """Replace every depthwise ``kernel_size`` x ``kernel_size`` ``nn.Conv2d`` by a ``Dcls2d``.

    A depthwise conv has ``groups == in_channels == out_channels`` (and dilation 1). The new layer
    keeps the stride and the bias setting, pads ``dilated_kernel_size // 2``, and starts from
    weights ~ N(0, 0.02) and zero bias. With ``share_positions`` all swapped layers with the same
    channel count share one ``P`` and one ``SIG`` Parameter object (so ``named_parameters()``
    lists each once). ``position_init`` "normal" keeps the paper's N(0, 0.5) positions (every
    element within about a cell of the centre); "uniform" spreads them uniformly over the dilated
    kernel, which the DCLS paper reports performs similarly. Returns the qualified names of the
    swapped modules in traversal order.
    """
    if position_init not in POSITION_INITS:
        raise ValueError(
            f"replace_depthwise: position_init={position_init!r}; expected one of {POSITION_INITS}"
        )
    for value, name in ((kernel_size, "kernel_size"), (dilated_kernel_size, "dilated_kernel_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"replace_depthwise: {name} must be a positive int, got {value!r}")
    if isinstance(kernel_count, bool) or not isinstance(kernel_count, int) or kernel_count < 1:
        raise ValueError(
            f"replace_depthwise: kernel_count must be an int >= 1, got {kernel_count!r}"
        )
    check_version(version)
    if _is_depthwise(model, kernel_size):
        raise ValueError(
            "replace_depthwise: the model itself is a depthwise conv; wrap it in a module"
        )

    targets = [(n, m) for n, m in model.named_modules() if n and _is_depthwise(m, kernel_size)]
    shared: dict[int, DclsNd] = {}
    swapped = []
    for name, conv in targets:
        channels = conv.in_channels
        layer = Dcls2d(
            channels,
            channels,
            kernel_count=kernel_count,
            dilated_kernel_size=dilated_kernel_size,
            stride=conv.stride,
            padding=dilated_kernel_size // 2,
            groups=channels,
            bias=conv.bias is not None,
            version=version,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if position_init == "uniform":
                for d, (low, high) in enumerate(layer.position_limits()):
                    nn.init.uniform_(layer.P[d], low, high)
            if layer.bias is not None:
                layer.bias.zero_()
        if share_positions:
            owner = shared.setdefault(channels, layer)
            if owner is not layer:
                layer.P = owner.P
                if layer.SIG is not None:
                    layer.SIG = owner.SIG
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
        swapped.append(name)
    return swapped


def clamp_dcls(model: nn.Module) -> None:
    """Clamp the positions of every DCLS layer in ``model`` (shared positions once)."""
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, DclsNd) and id(module.P) not in seen:
            seen.add(id(module.P))
            module.clamp_parameters()


def is_dcls_position(name: str) -> bool:
    """True for a parameter name whose last component is a DCLS position (``P``) or ``SIG``."""
    return name.rpartition(".")[2] in POSITION_NAMES

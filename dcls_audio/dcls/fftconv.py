"""FFT-based depthwise 2-D cross-correlation for large DCLS kernels on the CPU.

PyTorch's CPU depthwise convolution runs a 23 x 23 kernel at roughly 1 GFLOP/s (seconds per
ConvNeXt-T stage-1 layer at 128 x 1001 input); through the FFT the same layer costs a few
transforms of the padded map. The result equals the direct convolution up to float rounding
(~1e-6 relative to the output's magnitude in float32). cuDNN has fast depthwise kernels, so this
path is only chosen on the CPU (see :func:`prefer_fft`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cpu_depthwise_2d", "fft_depthwise_conv2d", "prefer_fft"]

# Measured on x86 CPUs: one direct depthwise multiply-add costs about as much as this many
# "n log2 n" units of a real FFT round trip. Training counts forward + backward on both sides
# (the direct weight gradient of large depthwise kernels is a slow path); inference compares the
# FFT with the channels_last direct forward: break-even between 6.3 (11x11 on 32x31: direct
# 1.6x faster) and 7.2 (11x11 on 64x62: FFT 1.5x faster), both at 1 and 2 threads on the
# project's 2-core x86 machine; an earlier 17 left ConvNeXt-T's stage-2/3 layers on the
# direct path, 5x / 1.2-1.7x slower than the FFT (docs/benchmarks.md).
_FFT_COST_FACTOR = 4.0
_FFT_COST_FACTOR_INFERENCE = 6.5


def _fast_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are all 2, 3, 5 or 7 (fast for pocketfft)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def cpu_depthwise_2d(x: Tensor, kernel: Tensor, groups: int) -> bool:
    """True for a depthwise 2-D convolution of a CPU input ``x`` ((N,) C, H, W) by ``kernel``."""
    return (
        x.device.type == "cpu"
        and kernel.dim() == 4
        and x.dim() in (3, 4)
        and groups == x.shape[-3] == kernel.shape[0]
        and kernel.shape[1] == 1
    )


def prefer_fft(
    x: Tensor,
    kernel: Tensor,
    groups: int,
    stride: Sequence[int],
    pads: Sequence[Sequence[int]],
    cost_factor: float | None = None,
    training: bool = True,
) -> bool:
    """True when the FFT path applies (CPU, float, depthwise, stride 1) and is estimated cheaper.

    ``training`` selects the calibration (forward + backward, or forward only);
    ``cost_factor`` overrides it (0 = whenever the path applies).
    """
    if not cpu_depthwise_2d(x, kernel, groups) or any(s != 1 for s in stride):
        return False
    if x.dtype not in (torch.float32, torch.float64):
        return False
    if kernel.dtype != x.dtype or torch.is_autocast_enabled("cpu"):
        return False
    (kh, kw), (h, w) = kernel.shape[-2:], x.shape[-2:]
    out_h = h + pads[0][0] + pads[0][1] - kh + 1
    out_w = w + pads[1][0] + pads[1][1] - kw + 1
    if out_h < 1 or out_w < 1:
        return False
    nh, nw = _fast_size(h + kh - 1), _fast_size(w + kw - 1)
    direct = out_h * out_w * kh * kw
    fft = nh * nw * math.log2(max(nh * nw, 2))
    calibrated = _FFT_COST_FACTOR if training else _FFT_COST_FACTOR_INFERENCE
    factor = calibrated if cost_factor is None else cost_factor
    return direct > factor * fft


def fft_depthwise_conv2d(
    x: Tensor, kernel: Tensor, bias: Tensor | None, pads: Sequence[Sequence[int]]
) -> Tensor:
    """``F.conv2d(x, kernel, bias, stride=1, groups=C)`` with zero padding ``pads`` per axis.

    ``x`` is (N, C, H, W) or (C, H, W); ``kernel`` (C, 1, kh, kw); ``pads`` is
    ((top, bottom), (left, right)); asymmetric and oversized paddings are exact.
    """
    (kh, kw), (h, w) = kernel.shape[-2:], x.shape[-2:]
    nh, nw = _fast_size(h + kh - 1), _fast_size(w + kw - 1)
    spec = torch.fft.rfft2(x, s=(nh, nw)) * torch.fft.rfft2(kernel[:, 0].flip(-2, -1), s=(nh, nw))
    full = torch.fft.irfft2(spec, s=(nh, nw))  # linear convolution, no wrap-around
    # out[o] = full[o - top + kh - 1]; indices outside [0, n) are zero (only padding there).
    start_h, start_w = kh - 1 - pads[0][0], kw - 1 - pads[1][0]
    stop_h, stop_w = h + pads[0][1], w + pads[1][1]  # exclusive
    out = F.pad(full, (-start_w, stop_w - nw, -start_h, stop_h - nh))
    if bias is not None:
        out = out + bias.view(-1, 1, 1)
    return out

"""DCLS kernel construction for 2-D depthwise layers as one Triton kernel (inference on CUDA).

:func:`dcls_audio.dcls.construct.construct_kernel` is about 25 small PyTorch operations per
layer; on a GPU each is a launch of a few microseconds, which for ConvNeXt-T's 18 DCLS layers is
~10 % of an inference batch. Here one program per channel builds the 1-D profiles of every
element, their full-grid sums, the normalised weights and the (windowed) kernel
``K = (g_0 * scale)^T @ g_1`` in float32, in one launch. Without autograd only: training keeps
the differentiable construction. Imported lazily, only where Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .construct import NORM_EPS, SIGMA_OFFSET

__all__ = ["construct_kernel_2d"]


@triton.jit
def _profile(centre, sigma, pos, GAUSS: tl.constexpr):
    # (BK, BS) profile of every element at grid positions pos
    x = pos[None, :].to(tl.float32) - centre[:, None]
    if GAUSS:
        t = x / sigma[:, None]
        return tl.exp(-0.5 * (t * t))
    return tl.maximum(1.0 - tl.abs(x), 0.0)


@triton.jit
def _construct_kernel(
    w_ptr, p_ptr, s_ptr, k_ptr, N, COUNT, SH, SW, LO_H, LO_W, OH, OW, EPS, OFFSET,
    GAUSS: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    k = tl.arange(0, BK)
    live = k < COUNT
    w = tl.load(w_ptr + n * COUNT + k, mask=live, other=0.0)
    c0 = tl.load(p_ptr + n * COUNT + k, mask=live, other=0.0) + SH // 2
    c1 = tl.load(p_ptr + (N + n) * COUNT + k, mask=live, other=0.0) + SW // 2
    s0 = c0
    s1 = c1
    if GAUSS:
        s0 = tl.abs(tl.load(s_ptr + n * COUNT + k, mask=live, other=1.0)) + OFFSET
        s1 = tl.abs(tl.load(s_ptr + (N + n) * COUNT + k, mask=live, other=1.0)) + OFFSET
    r = tl.arange(0, BS)
    # normalisation over the full grid, as construct_kernel
    sum0 = tl.sum(tl.where(r[None, :] < SH, _profile(c0, s0, r, GAUSS), 0.0), 1)
    sum1 = tl.sum(tl.where(r[None, :] < SW, _profile(c1, s1, r, GAUSS), 0.0), 1)
    scale = tl.where(live, w / (sum0 * sum1 + EPS), 0.0)
    # the window's rows and columns
    g0 = tl.where(r[None, :] < OH, _profile(c0, s0, LO_H + r, GAUSS), 0.0) * scale[:, None]
    g1 = tl.where(r[None, :] < OW, _profile(c1, s1, LO_W + r, GAUSS), 0.0)
    kernel = tl.dot(tl.trans(g0), g1, input_precision="ieee")
    out = (r < OH)[:, None] & (r < OW)[None, :]
    tl.store(k_ptr + n * OH * OW + r[:, None] * OW + r[None, :], kernel, mask=out)


def construct_kernel_2d(
    weight: Tensor, P: Tensor, SIG: Tensor | None, size: tuple[int, int], version: str,
    window: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> Tensor:  # fmt: skip
    """``construct_kernel(weight, P, SIG, size, version, window=window)`` for 2-D, no autograd.

    ``weight`` (out, in/groups, count), ``P``/``SIG`` (2, out, in/groups, count), float32; the
    result is float32 (out, in/groups, *window extent).
    """
    out_ch, in_ch, count = weight.shape
    (lo_h, hi_h), (lo_w, hi_w) = window or ((0, size[0]), (0, size[1]))
    oh, ow = hi_h - lo_h, hi_w - lo_w
    n = out_ch * in_ch
    result = torch.empty((out_ch, in_ch, oh, ow), device=weight.device, dtype=torch.float32)
    w = weight.detach().float().contiguous()
    p = P.detach().float().contiguous()
    s = p if SIG is None else SIG.detach().float().contiguous()
    bk = max(16, triton.next_power_of_2(count))
    bs = max(16, triton.next_power_of_2(max(size)))
    _construct_kernel[(n,)](
        w, p, s, result, n, count, size[0], size[1], lo_h, lo_w, oh, ow, NORM_EPS, SIGMA_OFFSET,
        GAUSS=version == "gauss", BK=bk, BS=bs, num_warps=4,
    )  # fmt: skip
    return result

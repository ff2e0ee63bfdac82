"""Triton kernels for large-kernel depthwise 2-D cross-correlation (stride 1, zero padding).

Imported lazily by :mod:`dcls_audio.dcls.dwconv` and only where Triton is installed. Whether the
kernels are compiled or run by Triton's interpreter is decided when this module is first imported
(``TRITON_INTERPRET=1``, read by ``triton.jit``); the interpreter runs them on CPU tensors.

Index convention (one (batch, channel) plane, ``top``/``left`` the leading paddings, which may be
negative or exceed the kernel): ``y[oh, ow] = sum_ij w[i, j] * x[oh - top + i, ow - left + j]``,
samples outside the input being zero. The input gradient is the same operation applied to the
output gradient with the flipped kernel and leading paddings ``(kh - 1 - top, kw - 1 - left)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["dw_forward", "dw_input_grad", "dw_weight_grad"]

WGRAD_TARGET_PROGRAMS = 4096  # weight-gradient programs to aim for (the GPU stays busy)


@triton.jit
def _fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, H, W, OH, OW, C, KH, KW, TOP, LEFT,
    HAS_BIAS: tl.constexpr, BF16_BITS: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    nc = tl.program_id(0)
    c = nc % C
    oh0 = tl.program_id(1) * BH
    ow0 = tl.program_id(2) * BW
    oh = oh0 + tl.arange(0, BH)
    ow = ow0 + tl.arange(0, BW)
    x_base = x_ptr + nc.to(tl.int64) * H * W
    w_base = w_ptr + c * KH * KW
    # Only taps that reach a real input row/column for some output of this tile.
    i_lo = tl.maximum(TOP - oh0 - BH + 1, 0)
    i_hi = tl.minimum(H + TOP - oh0, KH)
    j_lo = tl.maximum(LEFT - ow0 - BW + 1, 0)
    j_hi = tl.minimum(W + LEFT - ow0, KW)
    acc = tl.zeros((BH, BW), dtype=tl.float32)
    for i in range(i_lo, i_hi):
        ih = oh - TOP + i
        row_ok = (ih >= 0) & (ih < H)
        row_ptr = x_base + ih[:, None] * W
        for j in range(j_lo, j_hi):
            iw = ow - LEFT + j
            mask = row_ok[:, None] & ((iw >= 0) & (iw < W))[None, :]
            xv = tl.load(row_ptr + iw[None, :], mask=mask, other=0.0)
            wv = tl.load(w_base + i * KW + j)
            acc += xv.to(tl.float32) * wv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    out = (oh < OH)[:, None] & (ow < OW)[None, :]
    y_off = nc.to(tl.int64) * OH * OW + oh[:, None] * OW + ow[None, :]
    if BF16_BITS:  # round to nearest even on the bits: the interpreter's cast truncates
        bits = acc.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        tl.store(y_ptr + y_off, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), out)
    else:
        tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out)


@triton.jit
def _wgrad_kernel(
    x_ptr, g_ptr, part_ptr, H, W, OH, OW, C, KH, KW, TOP, LEFT, ROWS, ROWS_PER, NJB,
    BJ: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    i = tl.program_id(1) // NJB
    j = (tl.program_id(1) % NJB) * BJ + tl.arange(0, BJ)
    s = tl.program_id(2)
    acc = tl.zeros((BJ, BW), dtype=tl.float32)
    r_lo = s * ROWS_PER
    r_hi = tl.minimum(r_lo + ROWS_PER, ROWS)
    for r in range(r_lo, r_hi):  # r runs over (batch, output row)
        n = r // OH
        oh = r - n * OH
        ih = oh - TOP + i
        if (ih >= 0) & (ih < H):
            plane = (n * C + c).to(tl.int64)
            x_row = x_ptr + (plane * H + ih) * W
            g_row = g_ptr + (plane * OH + oh) * OW
            for w0 in range(0, OW, BW):
                ow = w0 + tl.arange(0, BW)
                gv = tl.load(g_row + ow, mask=ow < OW, other=0.0).to(tl.float32)
                iw = ow[None, :] - LEFT + j[:, None]
                mask = (iw >= 0) & (iw < W) & (ow < OW)[None, :] & (j < KW)[:, None]
                xv = tl.load(x_row + iw, mask=mask, other=0.0).to(tl.float32)
                acc += xv * gv[None, :]
    part = tl.sum(acc, axis=1)
    tl.store(part_ptr + ((s * C + c) * KH + i) * KW + j, part, mask=j < KW)


_INTERPRETED = triton.knobs.runtime.interpret  # as triton.jit saw it when decorating


def _pow2(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(max(n, 1)), cap)


def _planes(x: Tensor) -> tuple[int, int, int, int]:
    n, c, h, w = x.shape
    return n, c, h, w


def dw_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, top: int, left: int, out_hw: tuple[int, int]
) -> Tensor:
    """Depthwise cross-correlation of contiguous NCHW ``x`` with ``weight`` (C, 1, kh, kw)."""
    n, c, h, w = _planes(x)
    kh, kw = weight.shape[-2:]
    oh, ow = out_hw
    y = torch.empty((n, c, oh, ow), device=x.device, dtype=x.dtype)
    bw = _pow2(ow, 64)
    bh = _pow2(oh, max(1, 1024 // bw))
    grid = (n * c, triton.cdiv(oh, bh), triton.cdiv(ow, bw))
    b = bias if bias is not None else weight
    _fwd_kernel[grid](
        x, weight, b, y, h, w, oh, ow, c, kh, kw, top, left,
        HAS_BIAS=bias is not None, BF16_BITS=_INTERPRETED and x.dtype == torch.bfloat16,
        BH=bh, BW=bw, num_warps=4,
    )  # fmt: skip
    return y


def dw_input_grad(
    grad_out: Tensor, weight: Tensor, top: int, left: int, in_hw: tuple[int, int]
) -> Tensor:
    """Gradient of :func:`dw_forward` with respect to its input (same op, flipped kernel)."""
    kh, kw = weight.shape[-2:]
    flipped = weight.flip(-2, -1).contiguous()
    return dw_forward(grad_out, flipped, None, kh - 1 - top, kw - 1 - left, in_hw)


def wgrad_splits(channels: int, kh: int, rows: int) -> int:
    """How many slices the (batch x output rows) reduction is cut into: enough programs."""
    return max(1, min(rows, -(-WGRAD_TARGET_PROGRAMS // max(channels * kh, 1))))


def dw_weight_grad(
    x: Tensor, grad_out: Tensor, kernel_hw: tuple[int, int], top: int, left: int
) -> Tensor:
    """Gradient of :func:`dw_forward` with respect to the kernel, (C, 1, kh, kw) in float32."""
    n, c, h, w = _planes(x)
    oh, ow = grad_out.shape[-2:]
    kh, kw = kernel_hw
    rows = n * oh
    splits = wgrad_splits(c, kh, rows)
    rows_per = -(-rows // splits)
    splits = -(-rows // rows_per)
    bj = _pow2(kw, 32)
    njb = triton.cdiv(kw, bj)
    part = torch.empty((splits, c, kh, kw), device=x.device, dtype=torch.float32)
    grid = (c, kh * njb, splits)
    _wgrad_kernel[grid](
        x, grad_out, part, h, w, oh, ow, c, kh, kw, top, left, rows, rows_per, njb,
        BJ=bj, BW=_pow2(ow, 64), num_warps=4,
    )  # fmt: skip
    return part.sum(0).unsqueeze(1)

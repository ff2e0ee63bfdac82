"""Triton kernels for large-kernel depthwise 2-D cross-correlation (stride 1, zero padding).

Imported lazily by :mod:`dcls_audio.dcls.dwconv` and only where Triton is installed. Whether the
kernels are compiled or run by Triton's interpreter is decided when this module is first imported
(``TRITON_INTERPRET=1``, read by ``triton.jit``); the interpreter runs them on CPU tensors.

Index convention (one (batch, channel) plane, ``top``/``left`` the leading paddings, which may be
negative or exceed the kernel): ``y[oh, ow] = sum_ij w[i, j] * x[oh - top + i, ow - left + j]``,
samples outside the input being zero. The input gradient is the same operation applied to the
output gradient with the flipped kernel and leading paddings ``(kh - 1 - top, kw - 1 - left)``.

Both directions run on tensor cores: a tile of output rows for kernel row ``i`` is the input rows
times the banded (Toeplitz) matrix of that kernel row; the weight gradient accumulates
``x_rows^T @ g_rows`` per kernel row and reads its taps off the diagonals. Accumulation is
float32; float32 operands use three TF32 products ("tf32x3"), float32-accurate.
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
    HAS_BIAS: tl.constexpr, BF16_BITS: tl.constexpr, PREC: tl.constexpr,
    BH: tl.constexpr, BW: tl.constexpr, BWI: tl.constexpr,
):  # fmt: skip
    # One kernel row i at a time as a matrix product: the (BH x BWI) input rows times the
    # (BWI x BW) Toeplitz matrix T[a, b] = w[i, a - b] of that row (tensor cores, one load of
    # the input tile per kernel row instead of one per tap).
    nc = tl.program_id(0)
    c = nc % C
    oh0 = tl.program_id(1) * BH
    ow0 = tl.program_id(2) * BW
    oh = oh0 + tl.arange(0, BH)
    ow = ow0 + tl.arange(0, BW)
    iw = ow0 - LEFT + tl.arange(0, BWI)
    diag = tl.arange(0, BWI)[:, None] - tl.arange(0, BW)[None, :]
    t_mask = (diag >= 0) & (diag < KW)
    col_ok = ((iw >= 0) & (iw < W))[None, :]
    x_base = x_ptr + nc.to(tl.int64) * H * W
    w_base = w_ptr + c * KH * KW
    i_lo = tl.maximum(TOP - oh0 - BH + 1, 0)  # kernel rows that meet a real input row
    i_hi = tl.minimum(H + TOP - oh0, KH)
    acc = tl.zeros((BH, BW), dtype=tl.float32)
    for i in range(i_lo, i_hi):
        ih = oh - TOP + i
        mask = ((ih >= 0) & (ih < H))[:, None] & col_ok
        xs = tl.load(x_base + ih[:, None] * W + iw[None, :], mask=mask, other=0.0)
        toeplitz = tl.load(w_base + i * KW + diag, mask=t_mask, other=0.0)
        acc = tl.dot(xs, toeplitz, acc, input_precision=PREC)
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
    x_ptr, g_ptr, part_ptr, H, W, OH, OW, C, TOP, LEFT, ROWS, ROWS_PER,
    PREC: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr, BWI: tl.constexpr,
):  # fmt: skip
    # For kernel row i: M[a, b] = sum over (batch, output row) of x[ih, w0 - LEFT + a] *
    # g[oh, w0 + b], summed over column blocks w0; the taps are its diagonals,
    # dw[i, j] = sum_b M[b + j, b], taken on the host.
    c = tl.program_id(0)
    i = tl.program_id(1)
    s = tl.program_id(2)
    KH = tl.num_programs(1)
    r_lo = s * ROWS_PER
    r_hi = tl.minimum(r_lo + ROWS_PER, ROWS)
    acc = tl.zeros((BWI, BW), dtype=tl.float32)
    for r0 in range(r_lo, r_hi, BR):
        rows = r0 + tl.arange(0, BR)  # flattened (batch, output row)
        n = rows // OH
        oh = rows - n * OH
        ih = oh - TOP + i
        plane = (n * C + c).to(tl.int64)
        row_ok = (rows < r_hi)[:, None]
        x_row = x_ptr + (plane * H + ih)[:, None] * W
        g_row = g_ptr + (plane * OH + oh)[:, None] * OW
        x_ok = row_ok & ((ih >= 0) & (ih < H))[:, None]
        for w0 in range(0, OW, BW):
            ow = w0 + tl.arange(0, BW)
            iw = w0 - LEFT + tl.arange(0, BWI)
            gs = tl.load(g_row + ow[None, :], mask=row_ok & (ow < OW)[None, :], other=0.0)
            x_mask = x_ok & ((iw >= 0) & (iw < W))[None, :]
            xs = tl.load(x_row + iw[None, :], mask=x_mask, other=0.0)
            acc = tl.dot(tl.trans(xs), gs, acc, input_precision=PREC)
    a = tl.arange(0, BWI)[:, None]
    b = tl.arange(0, BW)[None, :]
    tl.store(part_ptr + (((s * C + c) * KH + i) * BWI + a) * BW + b, acc)


_INTERPRETED = triton.knobs.runtime.interpret  # as triton.jit saw it when decorating


BW = 32  # output columns per tile
BR = 32  # (batch, output row) pairs per weight-gradient step


def _pow2(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(max(n, 1)), cap)


def _window(kw: int) -> int:
    """Input columns a tile of BW outputs reads: BW + kw - 1, rounded up to a power of two."""
    return triton.next_power_of_2(BW + kw - 1)


def _planes(x: Tensor) -> tuple[int, int, int, int]:
    n, c, h, w = x.shape
    return n, c, h, w


def _precision(dtype: torch.dtype) -> str | None:
    # float32: three TF32 products recover float32 accuracy at tensor-core speed
    return "tf32x3" if dtype == torch.float32 else None


def dw_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, top: int, left: int, out_hw: tuple[int, int]
) -> Tensor:
    """Depthwise cross-correlation of contiguous NCHW ``x`` with ``weight`` (C, 1, kh, kw)."""
    n, c, h, w = _planes(x)
    kh, kw = weight.shape[-2:]
    oh, ow = out_hw
    y = torch.empty((n, c, oh, ow), device=x.device, dtype=x.dtype)
    bh = max(16, _pow2(oh, 64))
    grid = (n * c, triton.cdiv(oh, bh), triton.cdiv(ow, BW))
    b = bias if bias is not None else weight
    _fwd_kernel[grid](
        x, weight, b, y, h, w, oh, ow, c, kh, kw, top, left,
        HAS_BIAS=bias is not None, BF16_BITS=_INTERPRETED and x.dtype == torch.bfloat16,
        PREC=_precision(x.dtype), BH=bh, BW=BW, BWI=_window(kw), num_warps=4,
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
    return max(1, min(-(-rows // BR), -(-WGRAD_TARGET_PROGRAMS // max(channels * kh, 1))))


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
    bwi = _window(kw)
    part = torch.empty((splits, c, kh, bwi, BW), device=x.device, dtype=torch.float32)
    _wgrad_kernel[(c, kh, splits)](
        x, grad_out, part, h, w, oh, ow, c, top, left, rows, rows_per,
        PREC=_precision(x.dtype), BR=BR, BW=BW, BWI=bwi, num_warps=4,
    )  # fmt: skip
    m = part.sum(0)
    # dw[c, i, j] = sum_b m[c, i, b + j, b]: a strided view walks those diagonals.
    diagonals = m.as_strided((c, kh, kw, BW), (kh * bwi * BW, bwi * BW, BW, BW + 1))
    return diagonals.sum(-1).unsqueeze(1)

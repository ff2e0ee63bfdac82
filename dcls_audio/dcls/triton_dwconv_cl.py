"""Triton depthwise kernels that read and write tensors of any layout in place (channels_last).

Hand-written for channels_last models: the kernels of :mod:`dcls_audio.dcls.triton_dwconv` read
a zero-margined NCHW buffer, so a channels_last activation had to be copied into one and their
NCHW output copied back (a launch and a round trip through memory each, on every layer and
direction). These take every tensor's strides instead, so channels_last input, output and
gradients are read and written where they are.

Same index convention and the same Toeplitz formulation as the NCHW kernels (see there), but a
program takes a block of ``BC`` channels: in channels_last the channels are the contiguous axis,
so a (channels x rows x columns) tile is one coalesced load, and the per-channel products are
one batched (3-D) ``tl.dot`` over the channel block. Columns outside the input are masked (no
zero margins). Accumulation is float32, float32 operands use "tf32x3", as there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_dwconv import (
    _INTERPRETED,
    _no_bias,
    _precision,
    _store,
    diagonal_sums,
    wgrad_splits,
    window,
)

__all__ = ["dw_forward", "dw_input_grad", "dw_weight_grad"]

_SIZES = ["ROWS", "H", "W", "OH", "OW", "C", "KH", "KW", "TOP", "LEFT", "HAS_BIAS"]


@triton.jit(do_not_specialize=_SIZES)
def _fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ROWS, H, W, OH, OW, C, KH, KW, TOP, LEFT, HAS_BIAS,
    SXN, SXC, SXH, SXW, SYN, SYC, SYH, SYW,
    BF16_BITS: tl.constexpr, PREC: tl.constexpr,
    BC: tl.constexpr, BM: tl.constexpr, BW: tl.constexpr, BWI: tl.constexpr,
):  # fmt: skip
    # y[n, c, oh, ow] = sum_ij w[c, i, j] x[n, c, oh - TOP + i, ow - LEFT + j]: for kernel row i,
    # (BC x BM x BWI) input rows times the (BC x BWI x BW) Toeplitz blocks T[c, a, b] = w[c, i,
    # a - b]. Channel blocks vary fastest over the programs: neighbours share cache lines.
    cc = tl.program_id(0) * BC + tl.arange(0, BC)
    rows = tl.program_id(1) * BM + tl.arange(0, BM)  # flattened (batch, output row)
    n = rows // OH
    oh = rows - n * OH
    row_ok = rows < ROWS
    c_ok = cc < C
    ow0 = tl.program_id(2) * BW
    a = tl.arange(0, BWI)
    b = tl.arange(0, BW)
    col = ow0 - LEFT + a
    col_ok = (col >= 0) & (col < W)
    diag = a[:, None] - b[None, :]
    band_ok = c_ok[:, None, None] & ((diag >= 0) & (diag < KW))[None, :, :]
    x_base = n.to(tl.int64) * SXN
    x_chan = cc[:, None, None].to(tl.int64) * SXC
    x_cols = (col * SXW)[None, None, :]
    oh_min = tl.min(tl.where(row_ok, oh, OH), axis=0)
    oh_max = tl.max(tl.where(row_ok, oh, 0), axis=0)
    acc = tl.zeros((BC, BM, BW), dtype=tl.float32)
    for i in range(tl.maximum(TOP - oh_max, 0), tl.minimum(H + TOP - oh_min, KH)):
        ih = oh - TOP + i
        r_ok = row_ok & (ih >= 0) & (ih < H)
        mask = c_ok[:, None, None] & r_ok[None, :, None] & col_ok[None, None, :]
        offs = x_chan + (x_base + ih * SXH)[None, :, None] + x_cols
        xs = tl.load(x_ptr + offs, mask=mask, other=0.0)
        band = tl.load(w_ptr + (cc[:, None, None] * KH + i) * KW + diag[None, :, :], band_ok,
                       other=0.0)  # fmt: skip
        acc = tl.dot(xs, band, acc, input_precision=PREC)
    acc += tl.load(b_ptr + cc * HAS_BIAS, mask=c_ok, other=0.0)[:, None, None]
    ow = ow0 + b
    y_off = (
        cc[:, None, None].to(tl.int64) * SYC + (n.to(tl.int64) * SYN + oh * SYH)[None, :, None]
        + (ow * SYW)[None, None, :]
    )  # fmt: skip
    ok = c_ok[:, None, None] & row_ok[None, :, None] & (ow < OW)[None, None, :]
    _store(y_ptr, y_off, acc, ok, BF16_BITS)


_WGRAD_SIZES = ["ROWS", "H", "W", "OH", "OW", "C", "TOP", "LEFT", "ROWS_PER"]


@triton.jit(do_not_specialize=_WGRAD_SIZES)
def _wgrad_kernel(
    x_ptr, g_ptr, part_ptr, ROWS, H, W, OH, OW, C, TOP, LEFT, ROWS_PER,
    SXN, SXC, SXH, SXW, SGN, SGC, SGH, SGW,
    PREC: tl.constexpr, BC: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr,
    BWI: tl.constexpr,
):  # fmt: skip
    # For kernel row i and each channel: M[a, b] = sum over (batch, output row) and column blocks
    # w0 of x[ih, w0 - LEFT + a] * g[oh, w0 + b]; the taps are its diagonals (taken on the host).
    cc = tl.program_id(0) * BC + tl.arange(0, BC)
    i = tl.program_id(1)
    s = tl.program_id(2)
    KH = tl.num_programs(1)
    c_ok = (cc < C)[:, None, None]
    a = tl.arange(0, BWI)
    b = tl.arange(0, BW)
    x_chan = cc[:, None, None].to(tl.int64) * SXC
    g_chan = cc[:, None, None].to(tl.int64) * SGC
    r_lo = s * ROWS_PER
    r_hi = tl.minimum(r_lo + ROWS_PER, ROWS)
    acc = tl.zeros((BC, BWI, BW), dtype=tl.float32)
    for r0 in range(r_lo, r_hi, BR):
        rows = r0 + tl.arange(0, BR)  # flattened (batch, output row)
        n = rows // OH
        oh = rows - n * OH
        ih = oh - TOP + i
        row_ok = (rows < r_hi)[None, :, None]
        x_ok = c_ok & row_ok & ((ih >= 0) & (ih < H))[None, :, None]
        x_rows = (n.to(tl.int64) * SXN + ih * SXH)[None, :, None]
        g_rows = (n.to(tl.int64) * SGN + oh * SGH)[None, :, None]
        for w0 in range(0, OW, BW):
            g_col = w0 + b
            g_mask = c_ok & row_ok & (g_col < OW)[None, None, :]
            gs = tl.load(g_ptr + g_chan + g_rows + (g_col * SGW)[None, None, :], mask=g_mask,
                         other=0.0)  # fmt: skip
            x_col = w0 - LEFT + a
            x_mask = x_ok & ((x_col >= 0) & (x_col < W))[None, None, :]
            xs = tl.load(x_ptr + x_chan + x_rows + (x_col * SXW)[None, None, :], mask=x_mask,
                         other=0.0)  # fmt: skip
            acc = tl.dot(tl.permute(xs, (0, 2, 1)), gs, acc, input_precision=PREC)
    part = part_ptr + (((s * C + cc[:, None, None]) * KH + i) * BWI + a[None, :, None]) * BW
    tl.store(part + b[None, None, :], acc, mask=c_ok)


def launch_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, top: int, left: int,
    out_hw: tuple[int, int], channels_last: bool, cfg: dict,
) -> Tensor:  # fmt: skip
    """Run the forward kernel on ``x`` (any strides) with one block configuration."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    oh, ow = out_hw
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, c, oh, ow), device=x.device, dtype=x.dtype, memory_format=fmt)
    bc, bm, bw = cfg["BC"], cfg["BM"], cfg["BW"]
    b = _no_bias(x.device) if bias is None else bias.float()
    grid = (triton.cdiv(c, bc), triton.cdiv(n * oh, bm), triton.cdiv(ow, bw))
    _fwd_kernel[grid](
        x, weight, b, y, n * oh, h, w, oh, ow, c, kh, kw, top, left, int(bias is not None),
        *x.stride(), *y.stride(),
        BF16_BITS=_INTERPRETED and x.dtype == torch.bfloat16, PREC=_precision(x.dtype),
        BC=bc, BM=bm, BW=bw, BWI=window(bw, kw), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )  # fmt: skip
    return y


def dw_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, top: int, left: int, out_hw: tuple[int, int],
    channels_last: bool,
) -> Tensor:  # fmt: skip
    """Depthwise cross-correlation of ``x`` (N, C, H, W, any strides) with ``weight`` (C, 1, kh,
    kw), read in place; the output is channels_last when ``channels_last``, else NCHW."""
    from .tuning import strided_forward_config

    def run(cfg: dict) -> Tensor:
        return launch_forward(x, weight, bias, top, left, out_hw, channels_last, cfg)

    return run(strided_forward_config(x, weight, out_hw, run))


def dw_input_grad(
    grad_out: Tensor, weight: Tensor, top: int, left: int, in_hw: tuple[int, int],
    channels_last: bool,
) -> Tensor:  # fmt: skip
    """Gradient of :func:`dw_forward` with respect to its input: the same operation on the output
    gradient with the flipped kernel, in channels_last when ``channels_last``."""
    kh, kw = weight.shape[-2:]
    flipped = weight.flip(-2, -1).contiguous()
    return dw_forward(grad_out, flipped, None, kh - 1 - top, kw - 1 - left, in_hw, channels_last)


def launch_weight_grad(
    x: Tensor, grad_out: Tensor, kernel_hw: tuple[int, int], top: int, left: int, cfg: dict
) -> Tensor:
    """Run the weight-gradient kernel on ``x`` and ``grad_out`` (any strides); (C, 1, kh, kw)."""
    n, c, h, w = x.shape
    oh, ow = grad_out.shape[-2:]
    kh, kw = kernel_hw
    bc, br, bw = cfg["BC"], cfg["BR"], cfg["BW"]
    rows = n * oh
    splits = wgrad_splits(triton.cdiv(c, bc), kh, rows, br, cfg["programs"])
    rows_per = -(-rows // splits)
    rows_per = -(-rows_per // br) * br
    splits = -(-rows // rows_per)
    bwi = window(bw, kw)
    part = torch.empty((splits, c, kh, bwi, bw), device=x.device, dtype=torch.float32)
    _wgrad_kernel[(triton.cdiv(c, bc), kh, splits)](
        x, grad_out, part, rows, h, w, oh, ow, c, top, left, rows_per, *x.stride(),
        *grad_out.stride(), PREC=_precision(x.dtype), BC=bc, BR=br, BW=bw, BWI=bwi,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return diagonal_sums(part, splits, c, kh, kw, bw, bwi)


def dw_weight_grad(
    x: Tensor, grad_out: Tensor, kernel_hw: tuple[int, int], top: int, left: int
) -> Tensor:
    """Gradient of :func:`dw_forward` with respect to the kernel, (C, 1, kh, kw) in float32."""
    from .tuning import strided_weight_grad_config

    def run(cfg: dict) -> Tensor:
        return launch_weight_grad(x, grad_out, kernel_hw, top, left, cfg)

    return run(strided_weight_grad_config(x, grad_out, kernel_hw, run))

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
``x_rows^T @ g_rows`` per kernel row and reads its taps off the diagonals. The rows of a tile are
flattened (batch, output row) pairs, so small maps still fill a tile. NCHW inputs are first copied
into a zero-margined buffer whose row pitch and tile origin are multiples of 8 elements
(:func:`align`; nothing is copied when already so laid out), so that every tile row is one
aligned, vectorised load with no column bounds but the pitch. channels_last tensors are read and
written in place by the kernels of :mod:`dcls_audio.dcls.triton_dwconv_cl` instead.
Accumulation is float32; float32 operands use three TF32 products ("tf32x3"), float32-accurate.
Block sizes, warps and pipeline stages come from :mod:`dcls_audio.dcls.tuning`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .triton_layout import relayout

__all__ = ["align", "dw_forward", "dw_input_grad", "dw_weight_grad"]

_FWD_RUNTIME = ["ROWS", "H", "OH", "OW", "C", "KH", "KW", "TOP", "SHIFT8", "PITCH8", "HAS_BIAS"]


@triton.jit
def _band(t_ptr, c, i, KH, KW, a, b, TOEP: tl.constexpr, BW: tl.constexpr, BWI: tl.constexpr):
    # The (BWI x BW) Toeplitz matrix T[a, b] = w[i, a - b] of kernel row i (zero when i is not
    # a kernel row): a tile of the precomputed (C, KH, BWI, BW) blocks, or gathered from the
    # (C, KH, KW) kernel.
    ok = (i >= 0) & (i < KH)
    row = c * KH + tl.minimum(tl.maximum(i, 0), KH - 1)
    if TOEP:
        return tl.load(t_ptr + (row * BWI + a[:, None]) * BW + b[None, :], mask=ok, other=0.0)
    diag = a[:, None] - b[None, :]
    return tl.load(t_ptr + row * KW + diag, mask=ok & (diag >= 0) & (diag < KW), other=0.0)


@triton.jit
def _store(y_ptr, offsets, acc, mask, BF16_BITS: tl.constexpr):
    if BF16_BITS:  # round to nearest even on the bits: the interpreter's cast truncates
        bits = acc.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        tl.store(y_ptr + offsets, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask)
    else:
        tl.store(y_ptr + offsets, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_FWD_RUNTIME)
def _fwd_kernel(
    x_ptr, t_ptr, b_ptr, y_ptr, ROWS, H, OH, OW, C, KH, KW, TOP, SHIFT8, PITCH8, HAS_BIAS,
    BF16_BITS: tl.constexpr, PREC: tl.constexpr, TOEP: tl.constexpr,
    BM: tl.constexpr, BW: tl.constexpr, BWI: tl.constexpr,
):  # fmt: skip
    # One kernel row i at a time as a matrix product: (BM x BWI) input rows times the (BWI x BW)
    # Toeplitz matrix of that row. x is the aligned buffer: column ``ow - left + j`` of the
    # input sits at ``ow - SHIFT + j`` there, zeros around it.
    c = tl.program_id(1)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)  # flattened (batch, output row)
    n = rows // OH
    oh = rows - n * OH
    row_ok = rows < ROWS
    pitch = PITCH8 * 8
    ow0 = tl.program_id(2) * BW
    a = tl.arange(0, BWI)
    b = tl.arange(0, BW)
    col = ow0 - SHIFT8 * 8 + a
    col_ok = ((col >= 0) & (col < pitch))[None, :]
    x_rows = (n * C + c).to(tl.int64) * H + oh - TOP  # buffer row of kernel row 0
    oh_min = tl.min(tl.where(row_ok, oh, OH), axis=0)
    oh_max = tl.max(tl.where(row_ok, oh, 0), axis=0)
    i_lo = tl.maximum(TOP - oh_max, 0)  # kernel rows that meet a real input row
    i_hi = tl.minimum(H + TOP - oh_min, KH)
    acc = tl.zeros((BM, BW), dtype=tl.float32)
    for i in range(i_lo, i_hi):
        ih = oh - TOP + i
        mask = (row_ok & (ih >= 0) & (ih < H))[:, None] & col_ok
        xs = tl.load(x_ptr + (x_rows + i)[:, None] * pitch + col[None, :], mask=mask, other=0.0)
        band = _band(t_ptr, c, i, KH, KW, a, b, TOEP, BW, BWI)
        acc = tl.dot(xs, band, acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c)
    ow = ow0 + b
    y_off = ((n * C + c).to(tl.int64) * OH + oh)[:, None] * OW + ow[None, :]
    _store(y_ptr, y_off, acc, row_ok[:, None] & (ow < OW)[None, :], BF16_BITS)


@triton.jit(do_not_specialize=_FWD_RUNTIME)
def _fwd_rows_kernel(
    x_ptr, t_ptr, b_ptr, y_ptr, ROWS, H, OH, OW, C, KH, KW, TOP, SHIFT8, PITCH8, HAS_BIAS,
    BF16_BITS: tl.constexpr, PREC: tl.constexpr, TOEP: tl.constexpr,
    BM: tl.constexpr, BW: tl.constexpr, BWI: tl.constexpr,
):  # fmt: skip
    # Four output rows oh0..oh0+3 of BM batch items at once (ROWS: the batch size): every input
    # row r is loaded once and serves the four (kernel row r - oh + top), instead of once per
    # (output row, kernel row).
    row_blocks = tl.cdiv(OH, 4)
    oh0 = (tl.program_id(0) % row_blocks) * 4
    n = (tl.program_id(0) // row_blocks) * BM + tl.arange(0, BM)
    n_ok = n < ROWS
    c = tl.program_id(1)
    pitch = PITCH8 * 8
    ow0 = tl.program_id(2) * BW
    a = tl.arange(0, BWI)
    b = tl.arange(0, BW)
    col = ow0 - SHIFT8 * 8 + a
    mask = n_ok[:, None] & ((col >= 0) & (col < pitch))[None, :]
    planes = (n * C + c).to(tl.int64)
    acc0 = tl.zeros((BM, BW), dtype=tl.float32)
    acc1 = tl.zeros((BM, BW), dtype=tl.float32)
    acc2 = tl.zeros((BM, BW), dtype=tl.float32)
    acc3 = tl.zeros((BM, BW), dtype=tl.float32)
    for r in range(tl.maximum(oh0 - TOP, 0), tl.minimum(oh0 + 3 - TOP + KH, H)):
        xs = tl.load(x_ptr + (planes * H + r)[:, None] * pitch + col[None, :], mask=mask, other=0.0)
        i = r - oh0 + TOP  # kernel row of output row oh0 (of oh0 + k: i - k)
        band = _band(t_ptr, c, i, KH, KW, a, b, TOEP, BW, BWI)
        acc0 = tl.dot(xs, band, acc0, input_precision=PREC)
        band = _band(t_ptr, c, i - 1, KH, KW, a, b, TOEP, BW, BWI)
        acc1 = tl.dot(xs, band, acc1, input_precision=PREC)
        band = _band(t_ptr, c, i - 2, KH, KW, a, b, TOEP, BW, BWI)
        acc2 = tl.dot(xs, band, acc2, input_precision=PREC)
        band = _band(t_ptr, c, i - 3, KH, KW, a, b, TOEP, BW, BWI)
        acc3 = tl.dot(xs, band, acc3, input_precision=PREC)
    bias = tl.load(b_ptr + c * HAS_BIAS)  # no bias: a zero at index 0
    ow = ow0 + b
    ok = n_ok[:, None] & (ow < OW)[None, :]
    rows = planes * OH + oh0
    _store(y_ptr, rows[:, None] * OW + ow[None, :], acc0 + bias, ok, BF16_BITS)
    _store(
        y_ptr, (rows + 1)[:, None] * OW + ow[None, :], acc1 + bias, ok & (oh0 + 1 < OH), BF16_BITS
    )
    _store(
        y_ptr, (rows + 2)[:, None] * OW + ow[None, :], acc2 + bias, ok & (oh0 + 2 < OH), BF16_BITS
    )
    _store(
        y_ptr, (rows + 3)[:, None] * OW + ow[None, :], acc3 + bias, ok & (oh0 + 3 < OH), BF16_BITS
    )


_WGRAD_RUNTIME = ["ROWS", "H", "OH", "OW", "C", "TOP", "SHIFT8", "XP8", "GOFF", "GP8", "ROWS_PER"]


@triton.jit(do_not_specialize=_WGRAD_RUNTIME)
def _wgrad_kernel(
    x_ptr, g_ptr, part_ptr, ROWS, H, OH, OW, C, TOP, SHIFT8, XP8, GOFF, GP8, ROWS_PER,
    PREC: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr, BWI: tl.constexpr,
):  # fmt: skip
    # For kernel row i: M[a, b] = sum over (batch, output row) of x[ih, w0 - left + a] *
    # g[oh, w0 + b], summed over column blocks w0; the taps are its diagonals,
    # dw[i, j] = sum_b M[b + j, b], taken on the host. x and g are aligned buffers (pitches
    # XP8 * 8 and GP8 * 8; g's column 0 at GOFF, zeros around both).
    i = tl.program_id(0)
    c = tl.program_id(1)
    s = tl.program_id(2)
    KH = tl.num_programs(0)
    x_pitch = XP8 * 8
    g_pitch = GP8 * 8
    a = tl.arange(0, BWI)
    b = tl.arange(0, BW)
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
        x_ok = row_ok & ((ih >= 0) & (ih < H))[:, None]
        x_row = (plane * H + ih)[:, None] * x_pitch
        g_row = (plane * OH + oh)[:, None] * g_pitch
        for w0 in range(0, OW, BW):
            g_col = w0 + GOFF + b
            gs = tl.load(g_ptr + g_row + g_col[None, :], mask=row_ok & (g_col < g_pitch)[None, :])
            x_col = w0 - SHIFT8 * 8 + a
            x_mask = x_ok & ((x_col >= 0) & (x_col < x_pitch))[None, :]
            xs = tl.load(x_ptr + x_row + x_col[None, :], mask=x_mask, other=0.0)
            acc = tl.dot(tl.trans(xs), gs, acc, input_precision=PREC)
    tl.store(part_ptr + (((s * C + c) * KH + i) * BWI + a[:, None]) * BW + b[None, :], acc)


_INTERPRETED = triton.knobs.runtime.interpret  # as triton.jit saw it when decorating


def window(bw: int, kw: int) -> int:
    """Input columns a tile of ``bw`` outputs reads: bw + kw - 1, rounded up to a power of two."""
    return max(16, triton.next_power_of_2(bw + kw - 1))


def align(x: Tensor, left: int) -> tuple[Tensor, int, int]:
    """``x`` (N, C, H, W) in a zero-margined contiguous (N, C, H, pitch) buffer.

    Column 0 of ``x`` lands at ``off = left mod 8``, so that a tile that starts at output column
    ``ow0`` (a multiple of 8) reads from the aligned column ``ow0 - (left - off)``; ``pitch`` is a
    multiple of 8. Returns (buffer, off, pitch); ``x`` itself when it is already so laid out.
    """
    n, c, h, w = x.shape
    off = left % 8
    pitch = -(-(off + w) // 8) * 8
    if off == 0 and pitch == w and x.is_contiguous():
        return x, off, pitch
    buf = torch.empty((n, c, h, pitch), device=x.device, dtype=x.dtype)
    return relayout(x, buf, off), off, pitch  # one launch, any layout of x


@functools.cache
def _toeplitz_index(bwi: int, bw: int, device: torch.device) -> Tensor:
    a = torch.arange(bwi, device=device)[:, None]
    return a - torch.arange(bw, device=device)[None, :] + bw


def toeplitz(weight: Tensor, bw: int, bwi: int) -> Tensor:
    """(C, kh, bwi, bw) blocks ``T[c, i, a, b] = w[c, i, a - b]`` (zero off the band)."""
    c, _, kh, kw = weight.shape
    padded = F.pad(weight.reshape(c, kh, kw), (bw, bwi))  # index a - b + bw, in range
    return padded[:, :, _toeplitz_index(bwi, bw, weight.device)]


def _precision(dtype: torch.dtype) -> str | None:
    # float32: three TF32 products recover float32 accuracy at tensor-core speed
    return "tf32x3" if dtype == torch.float32 else None


@functools.cache
def _no_bias(device: torch.device) -> Tensor:
    return torch.zeros(1, device=device, dtype=torch.float32)


def launch_forward(
    xa: Tensor, shift: int, pitch: int, weight: Tensor, bias: Tensor | None, top: int,
    in_hw: tuple[int, int], out_hw: tuple[int, int], cfg: dict,
) -> Tensor:  # fmt: skip
    """Run the forward kernel on an aligned buffer ``xa`` with one block configuration."""
    n, c = xa.shape[:2]
    h = in_hw[0]
    kh, kw = weight.shape[-2:]
    oh, ow = out_hw
    bm, bw = cfg["BM"], cfg["BW"]
    bwi = window(bw, kw)
    t = toeplitz(weight, bw, bwi) if cfg["TOEP"] else weight
    y = torch.empty((n, c, oh, ow), device=xa.device, dtype=xa.dtype)
    b = _no_bias(xa.device) if bias is None else bias.float()
    if cfg.get("R", 1) == 4:  # four output rows of BM batch items per program
        kernel, rows = _fwd_rows_kernel, n
        grid = (triton.cdiv(n, bm) * triton.cdiv(oh, 4), c, triton.cdiv(ow, bw))
    else:
        kernel, rows = _fwd_kernel, n * oh
        grid = (triton.cdiv(n * oh, bm), c, triton.cdiv(ow, bw))
    kernel[grid](
        xa, t, b, y, rows, h, oh, ow, c, kh, kw, top, shift // 8, pitch // 8,
        int(bias is not None),
        BF16_BITS=_INTERPRETED and xa.dtype == torch.bfloat16, PREC=_precision(xa.dtype),
        TOEP=bool(cfg["TOEP"]), BM=bm, BW=bw, BWI=bwi, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )  # fmt: skip
    return y


def dw_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, top: int, left: int, out_hw: tuple[int, int],
    aligned: tuple[Tensor, int, int] | None = None,
) -> Tensor:  # fmt: skip
    """Depthwise cross-correlation of NCHW ``x`` (any layout) with ``weight`` (C, 1, kh, kw).

    ``aligned``: ``align(x, left)`` when the caller already has it.
    """
    from .tuning import forward_config

    xa, off, pitch = aligned or align(x, left)
    shift = left - off
    in_hw = tuple(x.shape[-2:])
    cfg = forward_config(
        xa, weight, in_hw, out_hw,
        lambda cfg: launch_forward(xa, shift, pitch, weight, bias, top, in_hw, out_hw, cfg),
    )  # fmt: skip
    return launch_forward(xa, shift, pitch, weight, bias, top, in_hw, out_hw, cfg)


def dw_input_grad(
    grad_out: Tensor, weight: Tensor, top: int, left: int, in_hw: tuple[int, int],
    aligned: tuple[Tensor, int, int] | None = None,
) -> Tensor:  # fmt: skip
    """Gradient of :func:`dw_forward` with respect to its input (same op, flipped kernel).

    ``aligned``: ``align(grad_out, kw - 1 - left)`` when the caller already has it.
    """
    kh, kw = weight.shape[-2:]
    flipped = weight.flip(-2, -1).contiguous()
    return dw_forward(grad_out, flipped, None, kh - 1 - top, kw - 1 - left, in_hw, aligned)


def wgrad_splits(channels: int, kh: int, rows: int, br: int, programs: int) -> int:
    """How many slices the (batch x output rows) reduction is cut into: enough programs."""
    return max(1, min(-(-rows // br), -(-programs // max(channels * kh, 1))))


def launch_weight_grad(
    xa: Tensor, shift: int, x_pitch: int, ga: Tensor, g_off: int, g_pitch: int, h: int,
    out_hw: tuple[int, int], kernel_hw: tuple[int, int], top: int, cfg: dict,
) -> Tensor:  # fmt: skip
    """Run the weight-gradient kernel on aligned buffers with one block configuration."""
    n, c = xa.shape[:2]
    oh, ow = out_hw
    kh, kw = kernel_hw
    br, bw = cfg["BR"], cfg["BW"]
    rows = n * oh
    splits = wgrad_splits(c, kh, rows, br, cfg["programs"])
    rows_per = -(-rows // splits)
    rows_per = -(-rows_per // br) * br
    splits = -(-rows // rows_per)
    bwi = window(bw, kw)
    part = torch.empty((splits, c, kh, bwi, bw), device=xa.device, dtype=torch.float32)
    _wgrad_kernel[(kh, c, splits)](
        xa, ga, part, rows, h, oh, ow, c, top, shift // 8, x_pitch // 8, g_off, g_pitch // 8,
        rows_per, PREC=_precision(xa.dtype), BR=br, BW=bw, BWI=bwi,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return diagonal_sums(part, splits, c, kh, kw, bw, bwi)


def diagonal_sums(part: Tensor, splits: int, c: int, kh: int, kw: int, bw: int, bwi: int) -> Tensor:
    """The (C, 1, kh, kw) weight gradient from the kernels' per-split partial products."""
    m = part.sum(0) if splits > 1 else part[0]
    # dw[c, i, j] = sum_b m[c, i, b + j, b]: a strided view walks those diagonals.
    diagonals = m.as_strided((c, kh, kw, bw), (kh * bwi * bw, bwi * bw, bw, bw + 1))
    return diagonals.sum(-1).unsqueeze(1)


def dw_weight_grad(
    x: Tensor, grad_out: Tensor, kernel_hw: tuple[int, int], top: int, left: int,
    aligned_x: tuple[Tensor, int, int] | None = None,
    aligned_grad: tuple[Tensor, int, int] | None = None,
) -> Tensor:  # fmt: skip
    """Gradient of :func:`dw_forward` with respect to the kernel, (C, 1, kh, kw) in float32.

    ``aligned_x`` / ``aligned_grad``: ``align(x, left)`` / any ``align(grad_out, ...)``.
    """
    from .tuning import weight_grad_config

    kh, kw = kernel_hw
    xa, x_off, x_pitch = aligned_x or align(x, left)
    ga, g_off, g_pitch = aligned_grad or align(grad_out, kw - 1 - left)
    shift, h = left - x_off, xa.shape[-2]
    out_hw = tuple(grad_out.shape[-2:])

    def run(cfg: dict) -> Tensor:
        return launch_weight_grad(
            xa, shift, x_pitch, ga, g_off, g_pitch, h, out_hw, kernel_hw, top, cfg
        )

    return run(weight_grad_config(xa, kernel_hw, out_hw, run))

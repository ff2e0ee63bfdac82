"""DCLS kernel construction for 2-D layers in one Triton launch per direction.

Hand-written because the PyTorch construction (:mod:`dcls_audio.dcls.construct`) is ~25 small
operations forward and ~50 backward per layer; on a GPU each is a launch of a few microseconds,
which made a DCLS training step host-bound. Here one program per channel builds the 1-D profiles
of every element, their full-grid sums, the normalised weights and the (windowed) kernel
``K = (g_0 * scale)^T @ g_1`` in float32; the backward program recomputes the same profiles and
returns the gradients of the weights, positions and sigmas from the kernel's gradient:

* ``A = g_1 @ G^T`` and ``B = g_0 @ G`` (per element ``k``: the kernel gradient contracted with
  the other axis' profile), so ``dL/dscale = sum_a g_0 * A``, ``dL/dg_0 = scale * A``,
  ``dL/dg_1 = scale * B`` on the window;
* the normalisation ``scale = w / (S_0 S_1 + eps)`` adds ``dL/dS_0 = -dL/dscale * scale * S_1 /
  (S_0 S_1 + eps)`` (and symmetrically) on every cell of the full grid;
* Gaussian ``g = exp(-t^2 / 2)``, ``t = (i - c) / sigma``: ``dg/dc = g t / sigma``,
  ``dg/dsigma = g t^2 / sigma``, ``sigma = |SIG| + 0.27`` (``d|SIG|/dSIG = sign(SIG)``, 0 at 0
  as autograd's); hat ``g = max(0, 1 - |i - c|)``: ``dg/dc = sign(i - c)`` where ``g > 0``.

The launchers take ``launch``, which :func:`torch.library.wrap_triton` is under torch.compile
(so inductor sees the kernel) and the identity in eager mode. Imported lazily, only where Triton
is installed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from .constants import NORM_EPS, SIGMA_OFFSET

__all__ = ["construct_kernel_2d", "construct_backward_2d", "construct_forward_2d"]


@triton.jit
def _profile(position, sigma, pos, GAUSS: tl.constexpr):
    # (BK, BS) profile of every element at the grid cells pos, given as offsets from the
    # centre cell: integers, exact, so x = pos - P is rounded once
    x = pos[None, :].to(tl.float32) - position[:, None]
    if GAUSS:
        t = x / sigma[:, None]
        return tl.exp(-0.5 * (t * t))
    return tl.maximum(1.0 - tl.abs(x), 0.0)


@triton.jit
def _grid_sums(c0, c1, s0, s1, r, SH, SW, GAUSS: tl.constexpr):
    # each element's profile sums over the full grid of each axis (the normalisation)
    sum0 = tl.sum(tl.where(r[None, :] < SH, _profile(c0, s0, r - SH // 2, GAUSS), 0.0), 1)
    sum1 = tl.sum(tl.where(r[None, :] < SW, _profile(c1, s1, r - SW // 2, GAUSS), 0.0), 1)
    return sum0, sum1


@triton.jit
def _load_params(w_ptr, p_ptr, s_ptr, n, N, COUNT, SH, SW, OFFSET, GAUSS: tl.constexpr, BK):
    k = tl.arange(0, BK)
    live = k < COUNT
    w = tl.load(w_ptr + n * COUNT + k, mask=live, other=0.0)
    c0 = tl.load(p_ptr + n * COUNT + k, mask=live, other=0.0)
    c1 = tl.load(p_ptr + (N + n) * COUNT + k, mask=live, other=0.0)
    raw0 = c0
    raw1 = c1
    s0 = c0
    s1 = c1
    if GAUSS:
        raw0 = tl.load(s_ptr + n * COUNT + k, mask=live, other=1.0)
        raw1 = tl.load(s_ptr + (N + n) * COUNT + k, mask=live, other=1.0)
        s0 = tl.abs(raw0) + OFFSET
        s1 = tl.abs(raw1) + OFFSET
    return k, live, w, c0, c1, raw0, raw1, s0, s1


@triton.jit
def _construct_kernel(
    w_ptr, p_ptr, s_ptr, k_ptr, N, COUNT, SH, SW, LO_H, LO_W, OH, OW, EPS, OFFSET,
    GAUSS: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    k, live, w, c0, c1, raw0, raw1, s0, s1 = _load_params(
        w_ptr, p_ptr, s_ptr, n, N, COUNT, SH, SW, OFFSET, GAUSS, BK
    )
    r = tl.arange(0, BS)
    sum0, sum1 = _grid_sums(c0, c1, s0, s1, r, SH, SW, GAUSS)  # as construct_kernel
    scale = tl.where(live, w / (sum0 * sum1 + EPS), 0.0)
    # the window's rows and columns
    g0 = _profile(c0, s0, LO_H - SH // 2 + r, GAUSS)
    g0 = tl.where(r[None, :] < OH, g0, 0.0) * scale[:, None]
    g1 = tl.where(r[None, :] < OW, _profile(c1, s1, LO_W - SW // 2 + r, GAUSS), 0.0)
    kernel = tl.dot(tl.trans(g0), g1, input_precision="ieee")
    out = (r < OH)[:, None] & (r < OW)[None, :]
    tl.store(k_ptr + n * OH * OW + r[:, None] * OW + r[None, :], kernel, mask=out)


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _axis_grads(dg_win, grad_sum, pos, sigma, raw, size, lo, extent, GAUSS: tl.constexpr, BS):
    # gradients of the position and sigma of one axis from dL/dg on the window (BK, BS: column r
    # is grid cell lo + r) and dL/dS, the gradient of the profile's full-grid sum
    r = tl.arange(0, BS)
    full = r[None, :] < size
    win = r[None, :] < extent
    xf = (r - size // 2)[None, :].to(tl.float32) - pos[:, None]
    xw = (lo - size // 2 + r)[None, :].to(tl.float32) - pos[:, None]
    if GAUSS:
        tf = xf / sigma[:, None]
        tw = xw / sigma[:, None]
        gtf = tl.where(full, tl.exp(-0.5 * (tf * tf)) * tf, 0.0)
        gtw = tl.where(win, tl.exp(-0.5 * (tw * tw)) * tw, 0.0)
        d_centre = (tl.sum(dg_win * gtw, 1) + grad_sum * tl.sum(gtf, 1)) / sigma
        d_sigma = (tl.sum(dg_win * gtw * tw, 1) + grad_sum * tl.sum(gtf * tf, 1)) / sigma
        return d_centre, d_sigma * _sign(raw)
    # d g / d centre = sign(x) where g > 0 (zero slope at the kinks, as autograd)
    sf = tl.where(full & (tl.abs(xf) < 1.0), _sign(xf), 0.0)
    sw = tl.where(win & (tl.abs(xw) < 1.0), _sign(xw), 0.0)
    return tl.sum(dg_win * sw, 1) + grad_sum * tl.sum(sf, 1), sigma * 0.0


@triton.jit
def _construct_backward_kernel(
    g_ptr, w_ptr, p_ptr, s_ptr, gw_ptr, gp_ptr, gs_ptr, N, COUNT, SH, SW, LO_H, LO_W, OH, OW,
    EPS, OFFSET, GAUSS: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    k, live, w, c0, c1, raw0, raw1, s0, s1 = _load_params(
        w_ptr, p_ptr, s_ptr, n, N, COUNT, SH, SW, OFFSET, GAUSS, BK
    )
    r = tl.arange(0, BS)
    sum0, sum1 = _grid_sums(c0, c1, s0, s1, r, SH, SW, GAUSS)
    denom = sum0 * sum1 + EPS
    scale = tl.where(live, w / denom, 0.0)
    g0 = tl.where(r[None, :] < OH, _profile(c0, s0, LO_H - SH // 2 + r, GAUSS), 0.0)  # (BK, a)
    g1 = tl.where(r[None, :] < OW, _profile(c1, s1, LO_W - SW // 2 + r, GAUSS), 0.0)  # (BK, b)
    tile = (r < OH)[:, None] & (r < OW)[None, :]
    grad = tl.load(g_ptr + n * OH * OW + r[:, None] * OW + r[None, :], mask=tile, other=0.0)
    a_mat = tl.dot(g1, tl.trans(grad), input_precision="ieee")  # (BK, a): sum_b g1 G[a, b]
    b_mat = tl.dot(g0, grad, input_precision="ieee")  # (BK, b): sum_a g0 G[a, b]
    grad_scale = tl.sum(g0 * a_mat, 1)
    grad_total = -grad_scale * scale / denom
    d0, e0 = _axis_grads(
        a_mat * scale[:, None], grad_total * sum1, c0, s0, raw0, SH, LO_H, OH, GAUSS, BS
    )
    d1, e1 = _axis_grads(
        b_mat * scale[:, None], grad_total * sum0, c1, s1, raw1, SW, LO_W, OW, GAUSS, BS
    )
    tl.store(gw_ptr + n * COUNT + k, grad_scale / denom, mask=live)
    tl.store(gp_ptr + n * COUNT + k, d0, mask=live)
    tl.store(gp_ptr + (N + n) * COUNT + k, d1, mask=live)
    if GAUSS:
        tl.store(gs_ptr + n * COUNT + k, e0, mask=live)
        tl.store(gs_ptr + (N + n) * COUNT + k, e1, mask=live)


def _blocks(count: int, size: tuple[int, int]) -> tuple[int, int]:
    return max(16, triton.next_power_of_2(int(count))), max(16, triton.next_power_of_2(max(size)))


def _identity(kernel: Callable) -> Callable:
    return kernel


def construct_forward_2d(
    weight: Tensor, P: Tensor, SIG: Tensor | None, size: tuple[int, int], gauss: bool,
    window: tuple[int, int, int, int], launch: Callable = _identity,
) -> Tensor:  # fmt: skip
    """The kernel (out, in/groups, hi_h - lo_h, hi_w - lo_w) in one launch; float32 inputs.

    ``window`` is ``(lo_h, hi_h, lo_w, hi_w)``; ``launch`` wraps the Triton kernel (see above).
    """
    out_ch, in_ch, count = weight.shape
    lo_h, hi_h, lo_w, hi_w = window
    oh, ow = hi_h - lo_h, hi_w - lo_w
    n = out_ch * in_ch
    result = torch.empty((out_ch, in_ch, oh, ow), device=weight.device, dtype=torch.float32)
    s = P if SIG is None else SIG
    bk, bs = _blocks(count, size)
    launch(_construct_kernel)[(n,)](
        weight, P, s, result, n, count, size[0], size[1], lo_h, lo_w, oh, ow, NORM_EPS,
        SIGMA_OFFSET, GAUSS=gauss, BK=bk, BS=bs, num_warps=4,
    )  # fmt: skip
    return result


def construct_backward_2d(
    grad: Tensor, weight: Tensor, P: Tensor, SIG: Tensor | None, size: tuple[int, int],
    gauss: bool, window: tuple[int, int, int, int], launch: Callable = _identity,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients of weight, P and SIG (empty for bilinear) from the kernel's, in one launch."""
    out_ch, in_ch, count = weight.shape
    lo_h, hi_h, lo_w, hi_w = window
    n = out_ch * in_ch
    grad_w = torch.empty_like(weight)
    grad_p = torch.empty_like(P)
    grad_s = torch.empty_like(SIG) if gauss else P.new_empty(0)
    s = P if SIG is None else SIG
    bk, bs = _blocks(count, size)
    launch(_construct_backward_kernel)[(n,)](
        grad, weight, P, s, grad_w, grad_p, grad_s if gauss else grad_p, n, count, size[0],
        size[1], lo_h, lo_w, hi_h - lo_h, hi_w - lo_w, NORM_EPS, SIGMA_OFFSET, GAUSS=gauss,
        BK=bk, BS=bs, num_warps=4,
    )  # fmt: skip
    return grad_w, grad_p, grad_s


def construct_kernel_2d(
    weight: Tensor, P: Tensor, SIG: Tensor | None, size: tuple[int, int], version: str,
    window: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> Tensor:  # fmt: skip
    """``construct_kernel(weight, P, SIG, size, version, window=window)`` for 2-D, no autograd.

    ``weight`` (out, in/groups, count), ``P``/``SIG`` (2, out, in/groups, count); the result is
    float32 (out, in/groups, *window extent).
    """
    (lo_h, hi_h), (lo_w, hi_w) = window or ((0, size[0]), (0, size[1]))
    args = [t if t is None else t.detach().float().contiguous() for t in (weight, P, SIG)]
    return construct_forward_2d(
        *args, tuple(size), version == "gauss", (lo_h, hi_h, lo_w, hi_w)
    )  # fmt: skip

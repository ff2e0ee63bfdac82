"""Separable construction of DCLS kernels.

A DCLS kernel is a sum of ``kernel_count`` elements, each a weight spread over a dense grid by an
interpolation centred on a learnable, real-valued position. Both interpolations used here factor
per spatial axis:

* ``"gauss"``: exp(-1/2 sum_d (x_d / s_d)^2) = prod_d exp(-1/2 (x_d / s_d)^2), s = |SIG| + 0.27;
* ``"bilinear"``: prod_d max(0, 1 - |x_d|) (the reference package's normalised ``"v1"``),

with ``x_d = i_d - c_d`` (grid index minus centre) and ``c_d = P[d] + size_d // 2``. The
reference package (``dcls`` 0.1.1) divides every element by (its sum over the whole grid + 1e-7);
that sum is the product of the per-axis 1-D sums, so

    K[n] = sum_k  w[n, k] / (prod_d S_d[n, k] + 1e-7)  *  g_0[n, k, :] (x) g_1[n, k, :] (x) ...

with ``g_d`` the 1-D profiles and ``S_d`` their sums. The outer products are contracted over the
count axis with one batched matrix product, so no tensor holding the count axis together with all
kernel axes is ever built (the reference materialises size x size x ndim x channels x count).

Axis convention: ``P[d]`` moves an element along spatial axis ``d`` of the kernel for every
dimensionality and every (also rectangular) size; ``P = 0`` is the cell ``size_d // 2``. The
reference package's 2-D and 3-D ``P[k]`` moves along axis ``ndim - 1 - k`` (and offsets it by the
wrong axis' size for rectangular kernels); flip ``P`` and ``SIG`` along dim 0 to convert.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .constants import NORM_EPS, SIGMA_OFFSET
from .construct_op import check_triton, construct_kernel_2d_op

VERSIONS = ("gauss", "bilinear")

__all__ = [
    "NORM_EPS",
    "SIGMA_OFFSET",
    "VERSIONS",
    "check_version",
    "construct_kernel",
    "normalize_size",
]


def check_version(version: str) -> str:
    """Return ``version`` if it names a supported interpolation, else raise ``ValueError``."""
    if version not in VERSIONS:
        raise ValueError(
            f"DCLS version must be one of {VERSIONS}, got {version!r} "
            "(the reference package's normalised 'v1' is called 'bilinear' here)"
        )
    return version


def normalize_size(size: int | Sequence[int], ndim: int, name: str = "dilated_kernel_size"):
    """Expand an int or check a sequence into a tuple of ``ndim`` positive ints."""
    if isinstance(size, bool):
        raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got {size!r}")
    if isinstance(size, int):
        out = (size,) * ndim
    else:
        try:
            out = tuple(int(s) for s in size)
        except TypeError as err:
            raise TypeError(
                f"{name} must be an int or a tuple of {ndim} ints, got {size!r}"
            ) from err
        if len(out) != ndim:
            raise ValueError(
                f"{name} must have {ndim} entries for a {ndim}-D kernel, got {len(out)}: {size!r}"
            )
    if any(s < 1 for s in out):
        raise ValueError(f"{name} entries must be >= 1, got {out}")
    return out


def _check_inputs(
    weight: Tensor, P: Tensor, SIG: Tensor | None, size: tuple[int, ...], version: str
) -> None:
    if weight.dim() != 3:
        raise ValueError(
            f"weight must have shape (out, in/groups, count), got {tuple(weight.shape)}"
        )
    ndim = len(size)
    expected = (ndim, *weight.shape)
    if tuple(P.shape) != expected:
        raise ValueError(
            f"P must have shape (ndim, out, in/groups, count) = {expected} for a {ndim}-D "
            f"kernel of size {size}, got {tuple(P.shape)}"
        )
    if version == "gauss":
        if SIG is None:
            raise ValueError("SIG is required for version 'gauss'")
        if tuple(SIG.shape) != expected:
            raise ValueError(f"SIG must have the shape of P {expected}, got {tuple(SIG.shape)}")


def _grid(like: Tensor, size: int) -> Tensor:
    """Grid cells as offsets from the centre cell ``size // 2`` (exact integers)."""
    return torch.arange(-(size // 2), size - size // 2, device=like.device, dtype=like.dtype)


class _GaussProfile(torch.autograd.Function):
    """1-D Gaussian profiles g[n, k, i] = exp(-((i - c) / sigma)^2 / 2) and their sums over i.

    Takes ``P`` (``c = P + size // 2``) and forms ``i - c`` as ``(i - size // 2) - P``: the
    integer offset is exact, so the difference is rounded once.

    Written as one autograd node with a closed-form backward: a handful of passes over the
    (n, count, size) tensor instead of the ~20 that the elementwise autograd graph costs.
    """

    @staticmethod
    def forward(ctx, position: Tensor, sigma: Tensor, size: int):
        t = (_grid(position, size) - position.unsqueeze(-1)) / sigma.unsqueeze(-1)
        g = torch.exp(t.square().mul_(-0.5))
        ctx.save_for_backward(t, g, sigma)
        return g, g.sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_g: Tensor | None, grad_sum: Tensor | None):
        t, g, sigma = ctx.saved_tensors
        grad = _combine(grad_g, grad_sum, g)
        if grad is None:
            return None, None, None
        u = grad.mul_(g).mul_(t)
        grad_centre = u.sum(-1) / sigma  # d g / d centre = g * t / sigma
        grad_sigma = u.mul_(t).sum(-1) / sigma  # d g / d sigma = g * t^2 / sigma
        return grad_centre, grad_sigma, None


class _HatProfile(torch.autograd.Function):
    """1-D bilinear (hat) profiles g[n, k, i] = max(0, 1 - |i - c|) and their sums over i.

    Takes ``P`` and forms ``i - c`` as :class:`_GaussProfile` does.
    The backward uses the same one-sided conventions as autograd on relu(1 - abs(x)): zero slope
    exactly at the kinks |x| = 0 and |x| = 1.
    """

    @staticmethod
    def forward(ctx, position: Tensor, size: int):
        x = _grid(position, size) - position.unsqueeze(-1)
        g = torch.relu(1.0 - x.abs())
        ctx.save_for_backward(x, g)
        return g, g.sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_g: Tensor | None, grad_sum: Tensor | None):
        x, g = ctx.saved_tensors
        grad = _combine(grad_g, grad_sum, g)
        if grad is None:
            return None, None
        slope = torch.sign(x).mul_(g > 0)  # d g / d centre
        return (grad * slope).sum(-1), None


def _combine(grad_g: Tensor | None, grad_sum: Tensor | None, like: Tensor) -> Tensor | None:
    """Gradient reaching the profile from its direct use and from its sum (a fresh tensor)."""
    if grad_g is None and grad_sum is None:
        return None
    if grad_g is None:
        return grad_sum.unsqueeze(-1).expand_as(like).clone()
    if grad_sum is None:
        return grad_g.clone()
    return grad_g + grad_sum.unsqueeze(-1)


def _profiles(
    P: Tensor, SIG: Tensor | None, size: tuple[int, ...], version: str
) -> tuple[list[Tensor], Tensor]:
    """Per-axis 1-D profiles (each (n, count, size_d)) and the full-grid sums (n, count)."""
    profiles = []
    total = None
    for d, s in enumerate(size):
        if version == "gauss":
            g, part = _GaussProfile.apply(P[d], SIG[d].abs() + SIGMA_OFFSET, s)
        else:
            g, part = _HatProfile.apply(P[d], s)
        profiles.append(g)
        total = part if total is None else total * part
    return profiles, total


def construct_kernel(
    weight: Tensor,
    P: Tensor,
    SIG: Tensor | None,
    dilated_kernel_size: int | Sequence[int],
    version: str = "gauss",
    *,
    window: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Build the dense DCLS kernel ``(out, in/groups, *size)`` from weights and positions.

    ``weight`` is (out, in/groups, count); ``P`` and ``SIG`` are (ndim, out, in/groups, count)
    with ``SIG`` ignored (may be None) for ``"bilinear"``. ``window`` optionally restricts the
    result to the half-open index range ``[lo, hi)`` of every axis; the normalisation still uses
    the full grid, so the result is the corresponding slice of the full kernel (up to the
    summation order the batched matmul uses for the smaller shape, ~1 ulp).
    """
    check_version(version)
    if P.dim() < 1 or P.shape[0] not in (1, 2, 3):
        raise ValueError(f"P must have 1, 2 or 3 spatial dims in dim 0, got {tuple(P.shape)}")
    size = normalize_size(dilated_kernel_size, P.shape[0])
    _check_inputs(weight, P, SIG, size, version)
    out_ch, in_ch, count = weight.shape
    n = out_ch * in_ch
    ndim = len(size)
    if window is not None and len(window) != ndim:
        raise ValueError(f"window must give one (lo, hi) range per axis ({ndim}), got {window}")

    # Build in the parameters' precision even under autocast; the conv casts the result.
    with torch.autocast(device_type=weight.device.type, enabled=False):
        if ndim == 2:  # one operator each way (one Triton launch each on CUDA)
            return _construct_2d(weight, P, SIG, size, version, window)
        flatP = P.reshape(ndim, n, count)
        flatS = SIG.reshape(ndim, n, count) if version == "gauss" else None
        profiles, total = _profiles(flatP, flatS, size, version)
        scale = weight.reshape(n, count) / (total + NORM_EPS)
        if window is not None:
            profiles = [g[..., lo:hi] for g, (lo, hi) in zip(profiles, window, strict=True)]
        shape = tuple(g.shape[-1] for g in profiles)

        first = (profiles[0] * scale.unsqueeze(-1)).transpose(1, 2)  # (n, s0, count)
        if ndim == 1:
            kernel = first.sum(-1)
        elif ndim == 2:
            kernel = torch.bmm(first, profiles[1])
        else:
            # (n, count, s1*s2): the count axis meets only the two trailing kernel axes.
            rest = (profiles[1].unsqueeze(-1) * profiles[2].unsqueeze(-2)).flatten(2)
            kernel = torch.bmm(first, rest)
    return kernel.reshape(out_ch, in_ch, *shape)


def _construct_2d(
    weight: Tensor, P: Tensor, SIG: Tensor | None, size: tuple[int, ...], version: str,
    window: Sequence[tuple[int, int]] | None,
) -> Tensor:  # fmt: skip
    """The 2-D construction through the operator ``dcls_audio::construct_2d``."""
    gauss = version == "gauss"
    sig = SIG if gauss else None
    (lo_h, hi_h), (lo_w, hi_w) = window or ((0, size[0]), (0, size[1]))
    win = [int(lo_h), int(hi_h), int(lo_w), int(hi_w)]
    if weight.device.type == "cuda":
        check_triton(weight, P, sig, list(size), gauss, win)
    return construct_kernel_2d_op(weight, P, sig, list(size), gauss, win)

"""The 2-D DCLS kernel construction as two operators: ``dcls_audio::construct_2d`` and its backward.

Written by hand (rather than left to autograd over :mod:`dcls_audio.dcls.construct`'s ~25
operations) so that a DCLS layer costs one operator forward and one backward: on CUDA each is
one Triton launch (:mod:`dcls_audio.dcls.triton_construct`), on the CPU each runs the exact
PyTorch separable construction (the forward is the same sequence of operations as
:func:`construct_kernel`'s and also returns the 1-D profiles; the backward is its closed form
from them: the same two batched products autograd runs, and the profiles' derivatives; on CUDA
the backward launch recomputes the profiles instead). Both are :func:`torch.library.triton_op`
operators:
eagerly and to a ``TorchDispatchMode`` each is one operator; under torch.compile they decompose,
so inductor compiles the Triton kernel itself on CUDA (and fuses the PyTorch operations on the
CPU). The window (crop) of :func:`construct_kernel` is an argument of both.

On CUDA the Triton kernels are compared once per device with the PyTorch path on first eager use
(:func:`check_triton`; off on a mismatch, with a warning); ``DCLS_FUSED_CONSTRUCT=0`` keeps the
PyTorch path. Under ``TRITON_INTERPRET=1`` (the tests) CPU tensors take the Triton kernels too.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .constants import NORM_EPS, SIGMA_OFFSET

__all__ = [
    "TRITON_CHECKED",
    "check_triton",
    "construct_2d",
    "construct_2d_backward",
    "construct_kernel_2d_op",
]

#: device -> whether the Triton construction matched the PyTorch one there (checked once)
TRITON_CHECKED: dict[torch.device, bool] = {}
Window = list[int]  # [lo_h, hi_h, lo_w, hi_w]


def _use_triton(t: Tensor) -> bool:
    """Whether the operators run their Triton kernels on ``t``'s device."""
    if os.environ.get("DCLS_FUSED_CONSTRUCT", "1") == "0" or t.dtype != torch.float32:
        return False
    if t.device.type == "cuda":
        from .dwconv import _HAS_TRITON

        return _HAS_TRITON and TRITON_CHECKED.get(t.device, True)
    # Triton's interpreter (tests) runs the kernels on real CPU tensors; traced (fake or
    # functional) ones take the PyTorch path, of the same shapes, since it cannot trace them
    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and t.device.type == "cpu"
    return interpreted and type(t) is Tensor


def _launcher(t: Tensor):
    """How the Triton kernels are called: traceable on CUDA, directly by the interpreter."""
    return wrap_triton if t.device.type == "cuda" else (lambda kernel: kernel)


def _profile(position: Tensor, sigma: Tensor | None, size: int) -> tuple[Tensor, Tensor]:
    """1-D profiles (n, count, size) and the Gaussian's ``t`` (or the hat's ``x``), no autograd.

    ``x = (i - size // 2) - P``: the integer offset first, exactly, so that ``x`` is rounded once
    (``i - (P + size // 2)`` loses the low bits of ``P`` when it moves far from the centre).
    """
    grid = torch.arange(-(size // 2), size - size // 2, device=position.device,
                        dtype=position.dtype)  # fmt: skip
    x = grid - position.unsqueeze(-1)
    if sigma is None:
        return torch.relu(1.0 - x.abs()), x
    t = x / sigma.unsqueeze(-1)
    return torch.exp(t.square().mul_(-0.5)), t


def _sigmas(SIG: Tensor | None, n: int, count: int) -> list[Tensor | None]:
    return [None, None] if SIG is None else [S.reshape(n, count).abs() + SIGMA_OFFSET for S in SIG]


def _profiles(P: Tensor, SIG: Tensor | None, size: list[int], n: int, count: int) -> list[Tensor]:
    """``[g_0, t_0, g_1, t_1]``: per axis the profile and its ``t`` (hat: ``x``), (n, count, s)."""
    out = []
    for d, (s, sigma) in enumerate(zip(size, _sigmas(SIG, n, count), strict=True)):
        out.extend(_profile(P[d].reshape(n, count), sigma, s))
    return out


def _saves_profiles(t: Tensor, triton: bool) -> bool:
    """Whether the forward returns the profiles for the backward: wherever it is not one Triton
    launch on CUDA, whose backward launch recomputes them (on every other device, whatever runs,
    so that fake and real tensors agree)."""
    return t.device.type != "cuda" or not triton


def _forward_torch(weight, P, SIG, size, window) -> tuple[Tensor, list[Tensor]]:
    out_ch, in_ch, count = weight.shape
    n = out_ch * in_ch
    profiles = _profiles(P, SIG, size, n, count)
    g0, _, g1, _ = profiles
    scale = weight.reshape(n, count) / (g0.sum(-1) * g1.sum(-1) + NORM_EPS)
    lo_h, hi_h, lo_w, hi_w = window
    first = (g0[..., lo_h:hi_h] * scale.unsqueeze(-1)).transpose(1, 2)  # (n, a, count)
    kernel = torch.bmm(first, g1[..., lo_w:hi_w])
    return kernel.reshape(out_ch, in_ch, hi_h - lo_h, hi_w - lo_w), profiles


def _axis_grad(dg: Tensor, grad_sum: Tensor, g: Tensor, t: Tensor, sigma, lo: int, hi: int):
    """Gradients of one axis' position and sigma from dL/dg (window) and dL/d(full-grid sum)."""
    size = g.shape[-1]
    if lo != 0 or hi != size:
        dg = torch.nn.functional.pad(dg, (lo, size - hi))
    dg = dg + grad_sum.unsqueeze(-1)
    if sigma is None:  # hat: d g / d centre = sign(x) where g > 0
        return dg.mul_(torch.sign(t).mul_(g > 0)).sum(-1), None
    u = dg.mul_(g).mul_(t)
    return u.sum(-1) / sigma, u.mul_(t).sum(-1) / sigma


def _backward_torch(grad, weight, P, SIG, profiles, size, window):
    """Closed-form gradients (the profiles recomputed when not given)."""
    out_ch, in_ch, count = weight.shape
    n = out_ch * in_ch
    if profiles[0].numel() == 0:
        profiles = _profiles(P, SIG, size, n, count)
    g0f, t0, g1f, t1 = profiles
    sum0, sum1 = g0f.sum(-1), g1f.sum(-1)
    denom = sum0 * sum1 + NORM_EPS
    scale = weight.reshape(n, count) / denom
    lo_h, hi_h, lo_w, hi_w = window
    g0, g1 = g0f[..., lo_h:hi_h], g1f[..., lo_w:hi_w]
    grad = grad.reshape(n, hi_h - lo_h, hi_w - lo_w)
    grad_first = torch.bmm(g1, grad.transpose(1, 2))  # (n, count, a)
    grad_g1 = torch.bmm(g0 * scale.unsqueeze(-1), grad)  # (n, count, b)
    grad_scale = (grad_first * g0).sum(-1)
    grad_total = -grad_scale * scale / denom
    sig0, sig1 = _sigmas(SIG, n, count)
    c0, s0 = _axis_grad(grad_first.mul_(scale.unsqueeze(-1)), grad_total * sum1, g0f, t0, sig0,
                        lo_h, hi_h)  # fmt: skip
    c1, s1 = _axis_grad(grad_g1, grad_total * sum0, g1f, t1, sig1, lo_w, hi_w)
    grad_p = torch.stack((c0, c1)).reshape(P.shape)
    grad_s = P.new_empty(0)
    if SIG is not None:  # d|SIG|/dSIG = sgn(SIG), zero at zero as autograd's abs
        grad_s = torch.stack((s0, s1)).reshape(SIG.shape).mul_(torch.sgn(SIG))
    return (grad_scale / denom).reshape(weight.shape), grad_p, grad_s


@triton_op("dcls_audio::construct_2d", mutates_args=())
def construct_2d(
    weight: Tensor, P: Tensor, SIG: Tensor | None, size: list[int], gauss: bool, window: Window
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The windowed 2-D kernel (out, in/groups, hi_h - lo_h, hi_w - lo_w), one operator, and the
    profiles ``g_0, t_0, g_1, t_1`` its backward reuses (empty where it recomputes them)."""
    sig = SIG if gauss else None
    triton = _use_triton(weight)
    if triton:
        from .triton_construct import construct_forward_2d

        args = [t if t is None else t.contiguous() for t in (weight, P, sig)]
        kernel = construct_forward_2d(*args, tuple(size), gauss, tuple(window), _launcher(weight))
        if not _saves_profiles(weight, triton):
            return kernel, *(weight.new_empty(0) for _ in range(4))
        out_ch, in_ch, count = weight.shape  # Triton's interpreter: the CPU's outputs
        return kernel, *_profiles(P, sig, size, out_ch * in_ch, count)
    kernel, profiles = _forward_torch(weight, P, sig, size, window)
    if not _saves_profiles(weight, triton):
        return kernel, *(weight.new_empty(0) for _ in range(4))
    return kernel, *profiles


@triton_op("dcls_audio::construct_2d_backward", mutates_args=())
def construct_2d_backward(
    grad: Tensor, weight: Tensor, P: Tensor, SIG: Tensor | None, g0: Tensor, t0: Tensor,
    g1: Tensor, t1: Tensor, size: list[int], gauss: bool, window: Window,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients of :func:`construct_2d`: weight, P and SIG (empty for bilinear); one operator.

    ``g0, t0, g1, t1``: the profiles :func:`construct_2d` returned (empty: recomputed).
    """
    sig = SIG if gauss else None
    if _use_triton(weight):
        from .triton_construct import construct_backward_2d

        args = [t if t is None else t.contiguous() for t in (grad, weight, P, sig)]
        return construct_backward_2d(*args, tuple(size), gauss, tuple(window), _launcher(weight))
    return _backward_torch(grad, weight, P, sig, [g0, t0, g1, t1], size, window)


def _setup_context(ctx, inputs, output) -> None:
    weight, P, SIG, size, gauss, window = inputs
    ctx.save_for_backward(weight, P, SIG, *output[1:])
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero gradients made for the profiles
    ctx.args = (list(size), gauss, list(window))


def _backward(ctx, grad: Tensor | None, *_profile_grads):
    if grad is None:  # nothing reached the kernel
        return None, None, None, None, None, None
    weight, P, SIG, *profiles = ctx.saved_tensors
    gw, gp, gs = construct_2d_backward(grad, weight, P, SIG, *profiles, *ctx.args)
    needs = ctx.needs_input_grad
    gs = gs if ctx.args[1] and needs[2] else None
    return (gw if needs[0] else None), (gp if needs[1] else None), gs, None, None, None


construct_2d.register_autograd(_backward, setup_context=_setup_context)


def construct_kernel_2d_op(
    weight: Tensor, P: Tensor, SIG: Tensor | None, size: list[int], gauss: bool, window: Window
) -> Tensor:
    """The kernel alone from :func:`construct_2d` (what construct_kernel returns)."""
    return construct_2d(weight, P, SIG, size, gauss, window)[0]


def check_triton(weight: Tensor, P: Tensor, SIG: Tensor | None, size, gauss: bool, window) -> None:
    """Compare the Triton construction with the PyTorch one once per CUDA device (eager only)."""
    device = weight.device
    if device in TRITON_CHECKED or torch.compiler.is_compiling() or not _use_triton(weight):
        return
    from .triton_construct import construct_forward_2d

    with torch.no_grad():
        args = [t if t is None else t.detach().contiguous() for t in (weight, P, SIG)]
        try:
            ref = _forward_torch(*args, size, window)[0]
            fused = construct_forward_2d(*args, tuple(size), gauss, tuple(window))
            err = ((fused - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
        except Exception as exc:  # noqa: BLE001 - the PyTorch construction still works
            err, reason = float("inf"), f"{type(exc).__name__}: {exc}"
        else:
            reason = f"max relative difference {err:.2e}"
    TRITON_CHECKED[device] = err <= 1e-5
    if err > 1e-5:
        warnings.warn(f"Triton DCLS kernel construction off on {device}: {reason}", stacklevel=3)

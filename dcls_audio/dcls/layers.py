"""DCLS convolution layers: drop-in replacements for ``nn.Conv1d/2d/3d``.

Differences from the reference package (``dcls`` 0.1.1), all output-preserving where it is right:

* kernels are built separably (see :mod:`dcls_audio.dcls.construct`), ~100x cheaper;
* ``P[d]`` moves along spatial axis ``d`` for every size (the reference swaps axes in 2-D/3-D);
* 2-D kernels are built by one operator forward and one backward
  (:mod:`dcls_audio.dcls.construct_op`; on CUDA one Triton launch each, checked against the
  PyTorch construction on first use; ``DCLS_FUSED_CONSTRUCT=0`` turns the Triton kernels off);
* in eval mode without autograd, on the CPU, the kernel is built once and reused while the
  parameters hold exactly the values it was built from (compared with a snapshot on every call,
  so in-place ``.data`` writes, fused optimizer steps, ``load_state_dict`` and ``.to()`` are all
  seen); on accelerators it is rebuilt every call (one launch, and a comparison would sync);
* when the input is so small that some kernel taps can only ever meet zero padding, those taps
  are cropped away and the padding is adjusted: the output grid and values are unchanged;
* on the CPU, large depthwise 2-D kernels are applied through the FFT when that is estimated to
  be cheaper (``conv_impl = "auto"``; ``"fft"`` whenever possible, ``"direct"`` never), with
  separate calibrations for training and inference; inference runs the direct depthwise
  convolution in channels_last, PyTorch's fast CPU path for it;
* on CUDA, stride-1 depthwise 2-D layers run through :func:`dwconv.depthwise_conv2d`, which
  times cuDNN, the FFT and a Triton kernel once per layer shape and keeps the fastest
  (``conv_impl = "auto"``; ``"fft"`` or ``"triton"`` force one, ``"direct"`` keeps cuDNN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from .construct import check_version, construct_kernel, normalize_size
from .dwconv import cuda_depthwise_applies, depthwise_conv2d
from .fftconv import cpu_depthwise_2d, fft_depthwise_conv2d, prefer_fft

__all__ = ["DclsNd", "Dcls1d", "Dcls2d", "Dcls3d"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
Window = tuple[tuple[int, int], ...]
CONV_IMPLS = ("auto", "fft", "direct", "triton")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _plan_axis(length: int, k: int, left: int, right: int, stride: int):
    """Window ``(lo, hi)`` of useful taps and new ``(left, right)`` padding for one axis.

    Taps outside the window only ever meet padding for this input length; the returned padding
    keeps every output position's taps on the same input samples, so the output is unchanged.
    Returns None when nothing can be cropped.
    """
    span = length + left + right - k
    if span < 0:
        return None
    last = (span // stride) * stride  # offset of the last output window
    j0 = max(0, left - last)  # first tap that reaches input sample 0 for some output
    j1 = min(k - 1, length - 1 + left)  # last tap that reaches input sample length-1
    if j1 < j0 or (j0 == 0 and j1 == k - 1):
        return None

    def right_pad(j_hi: int) -> int:
        return last - left + j_hi + 1 - length

    # Prefer equal padding on both sides (plain conv, no F.pad) by keeping a few padding-only taps.
    q = max(left - j0, right_pad(j1), 0)
    if q <= left and q <= right_pad(k - 1):
        return (left - q, q + left + length - last), (q, q)
    return (j0, j1 + 1), (left - j0, right_pad(j1))


class DclsNd(nn.Module):
    """Common base of :class:`Dcls1d`, :class:`Dcls2d` and :class:`Dcls3d`."""

    ndim: int = 0
    _conv = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        dilated_kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        version: str = "gauss",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        n = self.ndim
        if n not in (1, 2, 3):
            raise TypeError("DclsNd is abstract: use Dcls1d, Dcls2d or Dcls3d")
        name = type(self).__name__
        _positive_int(in_channels, f"{name} in_channels")
        _positive_int(out_channels, f"{name} out_channels")
        _positive_int(groups, f"{name} groups")
        if isinstance(kernel_count, bool) or not isinstance(kernel_count, int) or kernel_count < 1:
            raise ValueError(f"{name} kernel_count must be an int >= 1, got {kernel_count!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name} in_channels ({in_channels}) and out_channels ({out_channels}) must both "
                f"be divisible by groups ({groups})"
            )
        check_version(version)
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"{name} padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}"
            )
        size = normalize_size(dilated_kernel_size, n, f"{name} dilated_kernel_size")
        stride_t = normalize_size(stride, n, f"{name} stride")
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(
                    f"{name} padding string must be 'valid' or 'same', got {padding!r}"
                )
            if padding == "same" and any(s != 1 for s in stride_t):
                raise ValueError(f"{name} padding='same' requires stride 1, got stride={stride_t}")
            pads = tuple(
                (0, 0) if padding == "valid" else ((k - 1) // 2, k - 1 - (k - 1) // 2) for k in size
            )
        else:
            pad_t = (padding,) * n if isinstance(padding, int) else tuple(padding)
            if len(pad_t) != n or any(not isinstance(p, int) or p < 0 for p in pad_t):
                raise ValueError(
                    f"{name} padding must be a non-negative int or a tuple of {n} of them, "
                    f"got {padding!r}"
                )
            pads = tuple((p, p) for p in pad_t)
            padding = pad_t

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_count = kernel_count
        self.dilated_kernel_size = size
        self.stride = stride_t
        self.padding = padding
        self.groups = groups
        self.padding_mode = padding_mode
        self.version = version
        # "auto": FFT for large depthwise 2-D kernels on the CPU when estimated cheaper, the
        # measured fastest depthwise path on CUDA; "fft": whenever it applies (float, depthwise,
        # stride 1); "triton": the Triton kernel on CUDA (direct on the CPU); "direct": cuDNN /
        # PyTorch's own convolution.
        self.conv_impl = "auto"
        self._pads = pads
        self._reversed_padding_repeated_twice = tuple(v for lr in reversed(pads) for v in lr)
        self._cache: tuple[Window | None, tuple[Tensor, ...], Tensor] | None = None

        kw = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups, kernel_count)
        self.weight = nn.Parameter(torch.empty(shape, **kw))
        self.P = nn.Parameter(torch.empty((n, *shape), **kw))
        if version == "gauss":
            self.SIG = nn.Parameter(torch.empty((n, *shape), **kw))
        else:
            self.register_parameter("SIG", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the reference: same draws in the same order for the same RNG state."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            # The reference draws its P[i] (our axis ndim-1-i) in order i = 0, 1, ...
            limits = self.position_limits()
            for i in range(self.ndim):
                d = self.ndim - 1 - i
                init.normal_(self.P[d], 0.0, 0.5).clamp_(*limits[d])
            if self.SIG is not None:
                init.constant_(self.SIG, 0.23)

    def position_limits(self) -> tuple[tuple[int, int], ...]:
        """Per axis ``(low, high)`` bounds of ``P`` that keep every element on the grid.

        ``(-(size // 2), size // 2)`` for odd sizes, as the reference; for even sizes the reference
        allows ``+size // 2``, which is the cell ``size``, just off the grid, so we stop one short.
        """
        return tuple((-(s // 2), (s - 1) // 2) for s in self.dilated_kernel_size)

    def clamp_parameters(self) -> None:
        """Clamp every position ``P[d]`` in place into :meth:`position_limits` (on the grid)."""
        lims = torch.tensor(self.position_limits(), dtype=self.P.dtype, device=self.P.device)
        with torch.no_grad():
            self.P.clamp_(min=lims[:, 0].view(-1, 1, 1, 1), max=lims[:, 1].view(-1, 1, 1, 1))

    def kernel(self, window: Window | None = None) -> Tensor:
        """The dense (differentiable) kernel ``(out, in/groups, *size)``, optionally a window."""
        return construct_kernel(
            self.weight, self.P, self.SIG, self.dilated_kernel_size, self.version, window=window
        )

    def _kernel_params(self) -> list[Tensor]:
        return [self.weight, self.P] + ([self.SIG] if self.SIG is not None else [])

    def _cache_hit(self, window: Window | None) -> bool:
        if self._cache is None or self._cache[0] != window:
            return False
        # Exact values, not version counters: .data writes and fused optimizers do not bump those.
        return all(
            s.device == p.device and s.dtype == p.dtype and s.shape == p.shape and torch.equal(s, p)
            for s, p in zip(self._cache[1], self._kernel_params(), strict=True)
        )

    def _cached_kernel(self, window: Window | None) -> Tensor:
        if (
            self.training
            or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or self.weight.device.type != "cpu"
        ):
            return self.kernel(window)
        if not self._cache_hit(window):
            snapshot = tuple(p.detach().clone() for p in self._kernel_params())
            self._cache = (window, snapshot, self.kernel(window))
        return self._cache[2]

    def train(self, mode: bool = True):
        """Set training mode; always drops the cached eval-mode kernel."""
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _plan(self, spatial: Sequence[int]) -> tuple[Window | None, tuple[tuple[int, int], ...]]:
        """Kernel window and per-axis (left, right) padding to use for this input size.

        Taps that can only meet zero padding are always cropped away (exact).
        """
        pads = self._pads if self.padding_mode == "zeros" else ((0, 0),) * self.ndim
        window, new_pads, cropped = [], [], False
        for length, k, (lo, hi), s in zip(
            spatial, self.dilated_kernel_size, pads, self.stride, strict=True
        ):
            plan = _plan_axis(length, k, lo, hi, s)
            if plan is None or plan[0] == (0, k):
                window.append((0, k))
                new_pads.append((lo, hi))
            else:
                cropped = True
                window.append(plan[0])
                new_pads.append(plan[1])
        return (tuple(window) if cropped else None), tuple(new_pads)

    def forward(self, input: Tensor) -> Tensor:
        """Convolve ``input`` with the constructed kernel, like ``nn.ConvNd``."""
        if input.dim() not in (self.ndim + 1, self.ndim + 2):
            raise ValueError(
                f"{type(self).__name__} expects a {self.ndim + 2}-D batched or {self.ndim + 1}-D "
                f"unbatched input, got shape {tuple(input.shape)}"
            )
        x = input
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        window, pads = self._plan(x.shape[-self.ndim :])
        kernel = self._cached_kernel(window)
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        grad = torch.is_grad_enabled() and (x.requires_grad or kernel.requires_grad)
        if self._on_cuda_path(x, kernel):
            path = None if self.conv_impl == "auto" else self.conv_impl
            return depthwise_conv2d(x, kernel, self.bias, pads, training=grad, path=path)
        if self.conv_impl in ("auto", "fft") and self.ndim == 2:
            cost = 0.0 if self.conv_impl == "fft" else None
            if prefer_fft(x, kernel, self.groups, self.stride, pads, cost, training=grad):
                return fft_depthwise_conv2d(x, kernel, self.bias, pads)
        if not grad and x.dim() == 4 and cpu_depthwise_2d(x, kernel, self.groups):
            # oneDNN's depthwise kernels are ~10x faster in channels_last than on NCHW inputs
            x = x.contiguous(memory_format=torch.channels_last)
        if all(lo == hi for lo, hi in pads):
            padding = tuple(lo for lo, _ in pads)
        else:
            x = F.pad(x, tuple(v for lr in reversed(pads) for v in lr))
            padding = 0
        return type(self)._conv(x, kernel, self.bias, self.stride, padding, 1, self.groups)

    def _on_cuda_path(self, x: Tensor, kernel: Tensor) -> bool:
        if self.ndim != 2 or self.conv_impl == "direct":
            return False
        args = (x.shape, kernel.shape, self.groups, self.stride, x.dtype)
        return cuda_depthwise_applies(x.device.type, *args)

    def to_conv(self) -> nn.Module:
        """An equivalent plain ``nn.ConvNd`` holding the constructed kernel (for deployment)."""
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[self.ndim]
        conv = conv_cls(
            self.in_channels,
            self.out_channels,
            self.dilated_kernel_size,
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.kernel())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        """Summary like ``nn.ConvNd``'s."""
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}, "
            f"dilated_kernel_size={self.dilated_kernel_size}, stride={self.stride}, "
            f"version={self.version}"
        )
        if self.padding != (0,) * self.ndim:
            s += f", padding={self.padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Dcls1d(DclsNd):
    """1-D DCLS convolution, a drop-in for ``nn.Conv1d``."""

    ndim = 1
    _conv = staticmethod(F.conv1d)


class Dcls2d(DclsNd):
    """2-D DCLS convolution, a drop-in for ``nn.Conv2d``."""

    ndim = 2
    _conv = staticmethod(F.conv2d)


class Dcls3d(DclsNd):
    """3-D DCLS convolution, a drop-in for ``nn.Conv3d``."""

    ndim = 3
    _conv = staticmethod(F.conv3d)

"""Large-kernel depthwise 2-D convolution on CUDA: path choice and the Triton autograd function.

cuDNN runs a 23 x 23 depthwise convolution, and above all its weight gradient, far below the
GPU's arithmetic rate (an order of magnitude slower than the 7 x 7 layer it replaces). Three
exact paths compute the same result: ``"cudnn"`` (``F.conv2d`` on NCHW), ``"fft"`` (float32,
:func:`fft_depthwise_conv2d`) and ``"triton"`` (:mod:`dcls_audio.dcls.triton_dwconv`). For each
layer shape (N, C, H, W, kernel, paddings, dtype, training or inference, device) the fastest is
timed once on first use and cached in :data:`CHOICES`; with ``DCLS_CONV_AUTOTUNE=0``, with
deterministic algorithms on, while capturing a CUDA graph or while torch.compile traces a shape
not timed before,
:func:`heuristic_path` decides instead. Under torch.compile the Triton path is the custom operator
``dcls_audio::triton_depthwise_conv2d`` (with its autograd and fake-tensor rules), so compiled
models keep it. A channels_last input is read, and its output and input gradient written, in
channels_last by :mod:`dcls_audio.dcls.triton_dwconv_cl` (no NCHW copies; ``DCLS_TRITON_CL=0``
copies through the NCHW kernels instead); since the paths are timed on tensors of the layer's
layout, the choice weighs the Triton path as it runs. Nothing here runs on the CPU (but
Triton's interpreter in the tests), and Triton is imported only when the Triton path runs.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .fftconv import fft_depthwise_conv2d

__all__ = [
    "CHOICES",
    "PATHS",
    "choose_path",
    "cuda_depthwise_applies",
    "depthwise_conv2d",
    "heuristic_path",
    "run_path",
    "triton_depthwise_conv2d",
    "triton_depthwise_op",
]

PATHS = ("cudnn", "fft", "triton")
CHOICES: dict[tuple, str] = {}  # layer-shape key -> measured (or heuristic) path
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
Pads = Sequence[Sequence[int]]


_HAS_TRITON = importlib.util.find_spec("triton") is not None  # without importing it
# DCLS_CONV_PATHS=cudnn,fft: the paths the choice may take (e.g. to leave out a failing one)
ALLOWED = tuple(
    p for p in os.environ.get("DCLS_CONV_PATHS", ",".join(PATHS)).split(",") if p in PATHS
)


def triton_available() -> bool:
    """True when Triton can be imported (checked once, at import) and is an allowed path."""
    return _HAS_TRITON and "triton" in ALLOWED


def autotune_enabled() -> bool:
    """Measure the paths on first use unless ``DCLS_CONV_AUTOTUNE=0``."""
    return os.environ.get("DCLS_CONV_AUTOTUNE", "1") != "0"


def cuda_depthwise_applies(
    device_type: str, x_shape: Sequence[int], kernel_shape: Sequence[int], groups: int,
    stride: Sequence[int], dtype: torch.dtype,
) -> bool:  # fmt: skip
    """True for a stride-1 depthwise 2-D convolution of a CUDA float tensor ((N,) C, H, W)."""
    return (
        device_type == "cuda"
        and len(x_shape) in (3, 4)
        and len(kernel_shape) == 4
        and groups == x_shape[-3] == kernel_shape[0]
        and kernel_shape[1] == 1
        and all(s == 1 for s in stride)
        and dtype in _DTYPES
    )


def heuristic_path(h: int, kh: int, kw: int, training: bool, has_triton: bool) -> str:
    """Deterministic default: Triton for large kernels, else FFT on tall maps, else cuDNN.

    The FFT/cuDNN split (>= 32 rows in inference, >= 16 in training) was measured on an H200.
    """
    if kh * kw < 64:
        return "cudnn"
    if has_triton:
        return "triton"
    return "fft" if h >= (16 if training else 32) else "cudnn"


def _key(x: Tensor, kernel: Tensor, pads: Pads, training: bool) -> tuple:
    flat = tuple(int(v) for lr in pads for v in lr)
    layout = _channels_last(x)  # the Triton path reads channels_last in place: another timing
    return (tuple(x.shape), tuple(kernel.shape[-2:]), flat, x.dtype, training, x.device, layout)


def choose_path(
    x: Tensor, kernel: Tensor, pads: Pads, training: bool,
    measure: Callable[..., dict[str, float]] | None = None,
) -> str:  # fmt: skip
    """The cached path for this layer shape; timed once (``measure``) or the heuristic."""
    key = _key(x, kernel, pads, training)
    if key in CHOICES:
        return CHOICES[key]
    kh, kw = kernel.shape[-2:]
    default = heuristic_path(x.shape[-2], kh, kw, training, triton_available())
    if torch.compiler.is_compiling():
        return default  # no timing while tracing; an eager warm-up call times and caches
    capturing = x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    # deterministic algorithms: no timing either, so that every process computes alike (a
    # resumed run ends with the weights of an uninterrupted one)
    if capturing or not autotune_enabled() or torch.are_deterministic_algorithms_enabled():
        return default  # not cached: a later eager call may still measure
    times = (measure or measure_paths)(x, kernel, pads, training)
    CHOICES[key] = min(times, key=times.get) if times else default
    return CHOICES[key]


def _time_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up (compiles Triton kernels, plans FFTs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def measure_paths(x: Tensor, kernel: Tensor, pads: Pads, training: bool) -> dict[str, float]:
    """Milliseconds per candidate path on random tensors shaped like ``x`` and ``kernel``."""
    # same dtypes and memory layouts as the real call (the cuDNN path's conversion counts)
    xs = torch.randn_like(x).requires_grad_(training)
    ks = torch.randn_like(kernel).requires_grad_(training)
    times = {}
    for path in PATHS:
        if path not in ALLOWED or (path == "triton" and not triton_available()):
            continue
        try:
            times[path] = _time_ms(lambda path=path: _step(path, xs, ks, pads, training))
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: not a candidate then
            warnings.warn(f"depthwise path {path!r} left out: {err}", stacklevel=2)
    return times


def _step(path: str, x: Tensor, kernel: Tensor, pads: Pads, training: bool) -> None:
    with torch.enable_grad() if training else torch.no_grad():
        y = run_path(path, x, kernel, None, pads)
        if training:
            torch.autograd.grad(y, (x, kernel), torch.ones_like(y))


def _explicit_pad(x: Tensor, pads: Pads) -> tuple[Tensor, tuple[int, int] | int]:
    if all(lo == hi for lo, hi in pads):
        return x, tuple(lo for lo, _ in pads)
    return F.pad(x, tuple(v for lr in reversed(pads) for v in lr)), 0


def run_path(path: str, x: Tensor, kernel: Tensor, bias: Tensor | None, pads: Pads) -> Tensor:
    """Depthwise ``F.conv2d`` with zero paddings ``pads`` via ``path``, in ``x``'s dtype."""
    if path == "cudnn":
        x = x.contiguous()  # cuDNN's depthwise kernels are slowest in channels_last
        xp, padding = _explicit_pad(x, pads)
        bias = None if bias is None else bias.to(x.dtype)
        return F.conv2d(xp, kernel.to(x.dtype), bias, 1, padding, 1, kernel.shape[0])
    if path == "fft":
        b = None if bias is None else bias.float()
        return fft_depthwise_conv2d(x.float(), kernel.float(), b, pads).to(x.dtype)
    if path == "triton":
        return triton_depthwise_conv2d(x, kernel, bias, pads)
    raise ValueError(f"unknown depthwise path {path!r}; expected one of {PATHS}")


def depthwise_conv2d(
    x: Tensor, kernel: Tensor, bias: Tensor | None, pads: Pads, training: bool,
    path: str | None = None,
) -> Tensor:  # fmt: skip
    """Depthwise 2-D convolution on CUDA through ``path`` or the chosen one; autocast-aware."""
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    if dtype not in _DTYPES:
        dtype = x.dtype
    x = x.to(dtype)  # kernel and bias keep theirs: the Triton path returns their grads unrounded
    with torch.autocast("cuda", enabled=False):
        path = path or choose_path(x, kernel, pads, training)
        return run_path(path, x, kernel, bias, pads)


def _out_hw(x: Tensor, kernel: Tensor, pads: Sequence[int]) -> tuple[int, int]:
    top, bottom, left, right = pads
    h, w = x.shape[-2:]
    kh, kw = kernel.shape[-2:]
    return h + top + bottom - kh + 1, w + left + right - kw + 1


def _channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _like_input(y: Tensor, channels_last: bool) -> Tensor:
    """The kernels' NCHW result in the input's layout (a channels_last model stays so)."""
    if not channels_last:
        return y
    from .triton_layout import channels_last_like

    return channels_last_like(y)


def _direct(t: Tensor) -> bool:
    """Whether the Triton path reads and writes ``t`` where it is (channels_last), without an
    NCHW copy (``DCLS_TRITON_CL=0``: never)."""
    return _channels_last(t) and os.environ.get("DCLS_TRITON_CL", "1") != "0"


def _triton_forward(x: Tensor, kernel: Tensor, bias: Tensor | None, pads: Sequence[int]):
    """Output (in ``x``'s layout), the saved input and the kernel in ``x``'s dtype.

    The saved input is ``align(x, left)`` for the NCHW kernels, ``(x, None, None)`` when the
    kernels read ``x`` in place (channels_last).
    """
    top, _, left, _ = pads
    weight = kernel.to(x.dtype).contiguous()
    out_hw = _out_hw(x, kernel, pads)
    if _direct(x):
        from . import triton_dwconv_cl as ts

        return ts.dw_forward(x, weight, bias, top, left, out_hw, True), (x, None, None), weight
    from . import triton_dwconv as tk

    aligned = tk.align(x, left)
    y = tk.dw_forward(x, weight, bias, top, left, out_hw, aligned)
    return _like_input(y, _channels_last(x)), aligned, weight


def _triton_backward(
    grad: Tensor, saved: tuple, weight: Tensor, pads: Sequence[int], kernel_dtype: torch.dtype,
    needs_input: bool, needs_kernel: bool, channels_last: bool = False,
) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """Input and kernel gradients (None where not needed) from the saved input (see
    :func:`_triton_forward`); the input gradient in channels_last when the input was. With a
    channels_last input or output gradient the kernels read both where they are."""
    top, _, left, _ = pads
    kh, kw = weight.shape[-2:]
    xs, off, _ = saved
    in_hw = (xs.shape[-2], _in_width(grad, weight, pads))
    gx = gk = None
    if off is None or _direct(grad):
        from . import triton_dwconv_cl as ts

        if needs_input:
            gx = ts.dw_input_grad(grad, weight, top, left, in_hw, channels_last)
        if needs_kernel:
            x = xs if off is None else xs[..., off : off + in_hw[1]]  # the aligned buffer's view
            gk = ts.dw_weight_grad(x, grad, (kh, kw), top, left).to(kernel_dtype)
        return gx, gk
    from . import triton_dwconv as tk

    ga = tk.align(grad, kw - 1 - left)
    if needs_input:
        gx = _like_input(tk.dw_input_grad(grad, weight, top, left, in_hw, ga), channels_last)
    if needs_kernel:
        gk = tk.dw_weight_grad(None, grad, (kh, kw), top, left, saved, ga).to(kernel_dtype)
    return gx, gk


def _in_width(grad: Tensor, weight: Tensor, pads: Sequence[int]) -> int:
    _, _, left, right = pads
    return grad.shape[-1] - left - right + weight.shape[-1] - 1


def _bias_grad(grad: Tensor, bias_dtype: torch.dtype) -> Tensor:
    return grad.sum((0, 2, 3), dtype=torch.float32).to(bias_dtype)


class _TritonDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, bias: Tensor | None, pads: tuple) -> Tensor:
        y, aligned, weight = _triton_forward(x, kernel, bias, pads)
        ctx.save_for_backward(aligned[0], weight)
        ctx.aligned, ctx.channels_last = aligned[1:], _channels_last(x)
        ctx.kernel_dtype, ctx.pads = kernel.dtype, pads
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        xa, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx, gk = _triton_backward(
            grad, (xa, *ctx.aligned), weight, ctx.pads, ctx.kernel_dtype, needs[0], needs[1],
            ctx.channels_last,
        )  # fmt: skip
        gb = _bias_grad(grad, ctx.bias_dtype) if ctx.bias_dtype and needs[2] else None
        return gx, gk, gb, None


@torch.library.custom_op("dcls_audio::triton_depthwise_conv2d", mutates_args=())
def triton_depthwise_op(
    x: Tensor, kernel: Tensor, bias: Tensor | None, pads: Sequence[int]
) -> Tensor:
    """The Triton path as an operator torch.compile keeps: NCHW (N, C, H, W), pads (t, b, l, r)."""
    return _triton_forward(x, kernel, bias, pads)[0]


def _empty(like: Tensor, shape: Sequence[int], channels_last: bool) -> Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


@triton_depthwise_op.register_fake
def _(x: Tensor, kernel: Tensor, bias: Tensor | None, pads: Sequence[int]) -> Tensor:
    return _empty(x, (*x.shape[:2], *_out_hw(x, kernel, pads)), _channels_last(x))


@torch.library.custom_op("dcls_audio::triton_depthwise_conv2d_backward", mutates_args=())
def triton_depthwise_backward_op(
    grad: Tensor, x: Tensor, kernel: Tensor, pads: Sequence[int], needs_input: bool,
    needs_kernel: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Input and kernel gradients of :func:`triton_depthwise_op` (empty where not needed)."""
    from . import triton_dwconv as tk

    weight = kernel.to(x.dtype).contiguous()
    saved = (x, None, None) if _direct(x) else tk.align(x, pads[2])
    gx, gk = _triton_backward(
        grad, saved, weight, pads, kernel.dtype, needs_input, needs_kernel, _channels_last(x)
    )
    return (x.new_empty(0) if gx is None else gx), (kernel.new_empty(0) if gk is None else gk)


@triton_depthwise_backward_op.register_fake
def _(grad, x, kernel, pads, needs_input, needs_kernel):
    gx = _empty(x, x.shape, _channels_last(x)) if needs_input else x.new_empty(0)
    return gx, kernel.new_empty(kernel.shape if needs_kernel else (0,))


def _setup_context(ctx, inputs, output) -> None:
    x, kernel, bias, pads = inputs
    ctx.save_for_backward(x, kernel)
    ctx.pads = tuple(pads)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _op_backward(ctx, grad: Tensor):
    x, kernel = ctx.saved_tensors
    needs = ctx.needs_input_grad
    gx, gk = triton_depthwise_backward_op(grad, x, kernel, ctx.pads, needs[0], needs[1])
    gb = _bias_grad(grad, ctx.bias_dtype) if ctx.bias_dtype and needs[2] else None
    return (gx if needs[0] else None), (gk if needs[1] else None), gb, None


triton_depthwise_op.register_autograd(_op_backward, setup_context=_setup_context)


def triton_depthwise_conv2d(x: Tensor, kernel: Tensor, bias: Tensor | None, pads: Pads) -> Tensor:
    """The Triton path: ((N,) C, H, W) input in any layout, (C, 1, kh, kw) kernel, any float.

    Computes in ``x``'s dtype (float32 accumulation); the kernel and bias gradients come back in
    their own dtypes, computed in float32. Under torch.compile it is the operator
    :func:`triton_depthwise_op`, which the compiler keeps in its graphs.
    """
    unbatched = x.dim() == 3
    x4 = x.unsqueeze(0) if unbatched else x
    flat = tuple(int(v) for lr in pads for v in lr)
    if torch.compiler.is_compiling():
        y = triton_depthwise_op(x4, kernel, bias, list(flat))
    else:
        y = _TritonDepthwise.apply(x4, kernel.contiguous(), bias, flat)
    return y.squeeze(0) if unbatched else y

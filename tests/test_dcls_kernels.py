"""Depthwise CUDA paths: Triton kernels (run by Triton's CPU interpreter), path choice and cache.

The interpreter is chosen when ``triton.jit`` decorates a kernel (``TRITON_INTERPRET=1`` must be
set before :mod:`dcls_audio.dcls.triton_dwconv` is imported), so those checks run in one
subprocess: this file executed as a script, which prints the errors as JSON.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from dcls_audio.dcls import Dcls2d, dwconv
from dcls_audio.dcls.dwconv import (
    choose_path,
    cuda_depthwise_applies,
    heuristic_path,
    run_path,
)

# name: (N, C, H, W, kh, kw, ((top, bottom), (left, right)), wgrad target programs)
KERNEL_CASES = {
    "odd_symmetric": (2, 3, 9, 8, 5, 5, ((2, 2), (2, 2)), None),
    "even_same_asymmetric": (2, 2, 7, 9, 4, 6, ((1, 2), (2, 3)), None),
    "cropped_23x23_on_8x7": (2, 2, 8, 7, 15, 13, ((7, 7), (6, 6)), None),
    "cropped_asymmetric": (1, 2, 2, 6, 9, 9, ((2, 6), (4, 4)), None),
    "map_smaller_than_kernel": (1, 2, 3, 4, 9, 9, ((4, 4), (4, 4)), None),
    "padding_beyond_kernel": (2, 1, 6, 4, 5, 3, ((9, 2), (0, 4)), None),
    "wide_blocks_multi_row_slices": (2, 1, 5, 70, 3, 35, ((1, 1), (17, 17)), 3),
    "tall_multi_slice": (3, 1, 40, 6, 5, 3, ((2, 2), (1, 1)), 100),
    "unbatched": (None, 3, 6, 5, 3, 3, ((1, 1), (1, 1)), None),
    "channels_last": ("cl", 4, 6, 7, 5, 3, ((2, 2), (1, 1)), 2),
}
# max|d| / max|ref|; bf16: one rounding of the output (unit roundoff 2^-8) plus fp32 sums
TOLERANCE = {"float32": 1e-5, "bfloat16": 2**-8 + 1e-5}


def _case_tensors(case, dtype, device="cpu"):
    n, c, h, w, kh, kw, pads, _ = case
    gen = torch.Generator().manual_seed(h * 100 + w)
    shape = (c, h, w) if n is None else (2 if n == "cl" else n, c, h, w)
    x = torch.randn(shape, generator=gen).to(dtype)
    if n == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    kernel = torch.randn(c, 1, kh, kw, generator=gen).to(dtype)
    bias = torch.randn(c, generator=gen).to(dtype)
    return x.to(device), kernel.to(device), bias.to(device), pads


def _errors(case, dtype, param_dtype=None, device="cpu") -> dict[str, float]:
    """Relative max errors of forward, input, weight and bias gradients vs float64 autograd.

    ``param_dtype``: kernel and bias in another dtype (float32 parameters under autocast).
    """
    from dcls_audio.dcls import triton_dwconv

    x, kernel, bias, pads = _case_tensors(case, dtype, device)
    if param_dtype is not None:
        kernel, bias = kernel.to(param_dtype), bias.to(param_dtype)
    if case[-1] is not None:
        triton_dwconv.WGRAD_TARGET_PROGRAMS = case[-1]
    ours_in = [t.clone().requires_grad_() for t in (x, kernel, bias)]
    ref_in = [t.double().requires_grad_() for t in (x, kernel, bias)]
    y = dwconv.triton_depthwise_conv2d(*ours_in, pads)
    flat = tuple(v for lr in reversed(pads) for v in lr)
    y_ref = F.conv2d(F.pad(ref_in[0], flat), ref_in[1], ref_in[2], groups=kernel.shape[0])
    upstream = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1))
    upstream = upstream.to(device, dtype)
    grads = torch.autograd.grad(y, ours_in, upstream)
    grads_ref = torch.autograd.grad(y_ref, ref_in, upstream.double())
    triton_dwconv.WGRAD_TARGET_PROGRAMS = 4096
    dtypes_ok = y.dtype == grads[0].dtype == dtype and grads[1].dtype == kernel.dtype
    out = {"dtype_ok": float(dtypes_ok and grads[2].dtype == bias.dtype)}
    for name, a, b in zip(("y", "dx", "dw", "db"), (y, *grads), (y_ref, *grads_ref), strict=True):
        out[name] = ((a.double() - b).abs().max() / b.abs().max()).item()
    return out


def _interpreted_errors() -> dict:
    """Run every case in both dtypes under the Triton interpreter (call in a fresh process)."""
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interp

    # triton.jit reads it when decorating, also triton's own jit helpers: set before any import
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    assert "dcls_audio.dcls.triton_dwconv" not in sys.modules
    # triton 3.6's interpreter turns a scalar into an int with int(shape-(1,) array), an error
    # under numpy >= 2.4 (triton-lang/triton#9171); runtime loop bounds need it.
    patch = interp._patch_lang_tensor

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched
    # Its dot multiplies bfloat16 operands as their raw uint16 bits; widen them exactly first.
    dot = interp.InterpreterBuilder.create_dot

    def widened(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        data = interp._convert_float(handle.data, tl.bfloat16, tl.float32, None)
        return interp.TensorHandle(data.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args):
        return dot(self, widened(a), widened(b), d, *args)

    interp.InterpreterBuilder.create_dot = create_dot
    torch.backends.cudnn.allow_tf32 = False
    result = {
        f"{name}-{dtype}": _errors(case, getattr(torch, dtype))
        for name, case in KERNEL_CASES.items()
        for dtype in TOLERANCE
    }
    for name in MIXED_CASES:
        result[f"{name}-mixed"] = _errors(KERNEL_CASES[name], torch.bfloat16, torch.float32)
    return result


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - start
    return result


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_triton_kernels_match_float64_reference(interpreted, name, dtype):
    errors = interpreted[f"{name}-{dtype}"]
    assert errors.pop("dtype_ok") == 1.0
    tol = TOLERANCE[dtype]
    assert all(err <= tol for err in errors.values()), errors


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_cuda_triton_kernels_match_float64_reference(name, dtype, monkeypatch):
    """The compiled kernels on the GPU, same cases and bounds as the interpreted ones."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    errors = _errors(KERNEL_CASES[name], getattr(torch, dtype), device="cuda")
    assert errors.pop("dtype_ok") == 1.0
    assert all(err <= TOLERANCE[dtype] for err in errors.values()), errors


@needs_cuda
@pytest.mark.parametrize("impl", ["auto", "triton", "fft"])
def test_cuda_layer_paths_match_cudnn(impl, fresh_choices, monkeypatch):
    """A ConvNeXt-like Dcls2d on CUDA: every path gives cuDNN's output and gradients (fp32)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    layer = Dcls2d(16, 16, 26, 23, padding=11, groups=16).cuda()
    x = torch.randn(4, 16, 20, 18, device="cuda", requires_grad=True)
    results = {}
    for name in ("direct", impl):
        layer.conv_impl = name
        y = layer(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        results[name] = (y, *grads)
    for a, b in zip(results[impl], results["direct"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


MIXED_CASES = ["odd_symmetric", "cropped_23x23_on_8x7", "tall_multi_slice"]


@pytest.mark.parametrize("name", MIXED_CASES)
def test_bf16_input_with_float32_kernel_returns_float32_parameter_grads(interpreted, name):
    errors = interpreted[f"{name}-mixed"]
    assert errors.pop("dtype_ok") == 1.0
    assert all(err <= TOLERANCE["bfloat16"] for err in errors.values()), errors
    # the kernel gradient is not rounded to bf16: float32 accumulation only
    assert errors["dw"] < 1e-5 and errors["db"] < 1e-5, errors


FWD_INTS = ("H", "W", "OH", "OW", "C", "KH", "KW", "TOP", "LEFT")
WGRAD_INTS = ("H", "W", "OH", "OW", "C", "TOP", "LEFT", "ROWS", "ROWS_PER")


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_triton_kernels_compile_for_gpus_without_one(arch, dtype, tmp_path, monkeypatch):
    """Both kernels compile to a cubin (Triton's bundled ptxas) with the host's block sizes."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreted kernels are not compiled")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dcls_audio.dcls import triton_dwconv as tk

    prec = "tf32x3" if dtype == "fp32" else None
    bwi = tk._window(23)
    fwd = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "b_ptr": "*fp32", "y_ptr": f"*{dtype}"}
    fwd |= dict.fromkeys(FWD_INTS, "i32")
    fwd_consts = {"HAS_BIAS": True, "BF16_BITS": False, "PREC": prec, "BH": 64, "BW": tk.BW}
    fwd_consts["BWI"] = bwi
    wgrad = {"x_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "part_ptr": "*fp32"}
    wgrad |= dict.fromkeys(WGRAD_INTS, "i32")
    wgrad_consts = {"PREC": prec, "BR": tk.BR, "BW": tk.BW, "BWI": bwi}
    target = GPUTarget("cuda", arch, 32)
    for fn, sig, consts in (
        (tk._fwd_kernel, fwd, fwd_consts),
        (tk._wgrad_kernel, wgrad, wgrad_consts),
    ):
        sig |= dict.fromkeys(consts, "constexpr")
        src = ASTSource(fn=fn, signature=sig, constexprs=consts)
        compiled = triton.compile(src, target=target, options={"num_warps": 4})
        assert compiled.asm["cubin"]


def test_interpreter_run_is_short(interpreted):
    assert interpreted["seconds"] < 120


def test_cuda_path_applies_only_to_cuda_stride1_depthwise():
    args = ((2, 8, 16, 16), (8, 1, 23, 23), 8, (1, 1), torch.bfloat16)
    assert cuda_depthwise_applies("cuda", *args)
    assert not cuda_depthwise_applies("cpu", *args)
    assert not cuda_depthwise_applies("meta", *args)
    assert not cuda_depthwise_applies("cuda", (2, 8, 16, 16), (8, 2, 23, 23), 4, (1, 1), args[-1])
    assert not cuda_depthwise_applies("cuda", *args[:3], (2, 1), args[-1])
    assert not cuda_depthwise_applies("cuda", *args[:4], torch.float64)
    assert cuda_depthwise_applies("cuda", (8, 16, 16), *args[1:])  # unbatched


def test_heuristic_path_is_deterministic():
    assert heuristic_path(64, 23, 23, training=True, has_triton=True) == "triton"
    assert heuristic_path(64, 7, 7, training=True, has_triton=True) == "cudnn"
    assert heuristic_path(64, 23, 23, training=False, has_triton=False) == "fft"
    assert heuristic_path(16, 23, 23, training=True, has_triton=False) == "fft"
    assert heuristic_path(16, 23, 23, training=False, has_triton=False) == "cudnn"


@pytest.fixture
def fresh_choices(monkeypatch):
    monkeypatch.setattr(dwconv, "CHOICES", {})
    return dwconv.CHOICES


def test_choice_is_measured_once_per_shape_and_reused(fresh_choices, monkeypatch):
    calls = []

    def fake_measure(x, kernel, pads, training):
        calls.append((tuple(x.shape), training))
        return {"cudnn": 3.0, "fft": 1.0, "triton": 2.0 if training else 0.5}

    monkeypatch.setattr(dwconv, "measure_paths", fake_measure)
    x, k = torch.empty(64, 96, 64, 62, device="meta"), torch.empty(96, 1, 23, 23, device="meta")
    pads = ((11, 11), (11, 11))
    for _ in range(3):
        assert choose_path(x, k, pads, training=True) == "fft"
        assert choose_path(x, k, pads, training=False) == "triton"
    assert calls == [((64, 96, 64, 62), True), ((64, 96, 64, 62), False)]
    assert choose_path(x[:32], k, pads, training=True) == "fft"  # a new batch size: timed once
    assert len(calls) == 3 and len(fresh_choices) == 3
    monkeypatch.setenv("DCLS_CONV_AUTOTUNE", "0")
    x2 = torch.empty(8, 96, 8, 7, device="meta")
    assert choose_path(x2, k, pads, True) == heuristic_path(
        8, 23, 23, True, dwconv.triton_available()
    )
    assert len(calls) == 3 and len(fresh_choices) == 3  # heuristic answers are not cached


@pytest.mark.parametrize("path", dwconv.PATHS[:2])
def test_run_path_equals_conv2d(path):
    x, kernel, bias = torch.randn(2, 3, 7, 9), torch.randn(3, 1, 4, 6), torch.randn(3)
    pads = ((1, 2), (2, 3))
    expected = F.conv2d(F.pad(x, (2, 3, 1, 2)), kernel, bias, groups=3)
    torch.testing.assert_close(
        run_path(path, x, kernel, bias, pads), expected, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="unknown depthwise path"):
        run_path("winograd", x, kernel, bias, pads)


def test_layer_never_takes_the_cuda_path_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("CUDA depthwise path used on the CPU")

    monkeypatch.setattr("dcls_audio.dcls.layers.depthwise_conv2d", fail)
    layer = Dcls2d(4, 4, 5, 23, padding=11, groups=4)
    x = torch.randn(2, 4, 30, 28, requires_grad=True)
    for impl in ("auto", "fft", "triton", "direct"):
        layer.conv_impl = impl
        layer(x).sum().backward()
        with torch.no_grad():
            layer(x)


def test_layer_routes_cuda_depthwise_through_the_dispatcher(fresh_choices, monkeypatch):
    seen, timed = [], []
    monkeypatch.setattr("dcls_audio.dcls.layers.cuda_depthwise_applies", lambda *a: True)
    monkeypatch.setattr(dwconv, "measure_paths", lambda *a: timed.append(1) or {"cudnn": 1.0})

    def spy(x, kernel, bias, pads, training, path=None):
        seen.append((tuple(kernel.shape), pads, training, path))
        chosen = path or choose_path(x, kernel, pads, training)
        return run_path(chosen, x, kernel, bias, pads)

    monkeypatch.setattr("dcls_audio.dcls.layers.depthwise_conv2d", spy)
    layer = Dcls2d(3, 3, 6, 23, padding=11, groups=3)
    x = torch.randn(2, 3, 8, 7, requires_grad=True)
    expected = F.conv2d(x, layer.kernel(), layer.bias, padding=11, groups=3)
    for _ in range(2):
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert seen[0] == ((3, 1, 15, 13), ((7, 7), (6, 6)), True, None)  # cropped kernel
    assert len(timed) == 1  # second call served from the cache
    layer.conv_impl = "fft"
    layer(x)
    assert seen[-1][-1] == "fft"
    layer.conv_impl = "direct"
    layer(x)
    assert len(seen) == 3


if __name__ == "__main__":
    print(json.dumps(_interpreted_errors()))

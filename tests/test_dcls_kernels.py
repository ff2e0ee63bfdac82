"""Depthwise CUDA paths: Triton kernels (run by Triton's CPU interpreter), path choice and cache.

The interpreter is chosen when ``triton.jit`` decorates a kernel (``TRITON_INTERPRET=1`` must be
set before :mod:`dcls_audio.dcls.triton_dwconv` is imported), so those checks run in one
subprocess, ``tests/triton_interpreter.py``, which prints the results as JSON: every case and
every candidate block configuration against float64, and ``torch.library.opcheck`` of the
custom operator (schema, autograd, fake-tensor rule) with a torch.compile check.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import CONSTRUCT_CASES, KERNEL_CASES, MIXED_CASES, TOLERANCE, errors

from dcls_audio.dcls import Dcls2d, dwconv, tuning
from dcls_audio.dcls.dwconv import (
    choose_path,
    cuda_depthwise_applies,
    heuristic_path,
    run_path,
)

HELPER = Path(__file__).with_name("triton_interpreter.py")


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    proc = subprocess.run(
        [sys.executable, str(HELPER)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_triton_kernels_match_float64_reference(interpreted, name, dtype):
    errs = dict(interpreted[f"{name}-{dtype}"])
    assert errs.pop("dtype_ok") == 1.0
    copies = errs.pop("copies")
    if KERNEL_CASES[name][0] in ("cl", "cl-gnchw"):  # read and written in place
        assert copies == 0
    tol = TOLERANCE[dtype]
    assert all(err <= tol for err in errs.values()), errs


def test_channels_last_runs_no_layout_copy(interpreted):
    """A channels_last input and output gradient: no copy into an NCHW buffer and back in
    forward, input and weight gradients; the count sees the copies of the NCHW kernels."""
    assert all(interpreted[f"channels_last-{dtype}"]["copies"] == 0 for dtype in TOLERANCE)
    copied = dict(interpreted["channels_last-copied"])
    assert copied.pop("copies") >= 3 and copied.pop("dtype_ok") == 1.0  # x, y, grad, input grad
    assert all(err <= TOLERANCE["float32"] for err in copied.values()), copied


def test_every_candidate_configuration_is_exact(interpreted):
    """Each block size, Toeplitz variant and warp/stage setting the tuner may pick is exact."""
    runs = {k: v for k, v in interpreted.items() if k.startswith("config")}
    count = max(len(tuning.FWD_CANDIDATES), len(tuning.WGRAD_CANDIDATES))
    assert len(runs) == 2 * count
    strided = {k: v for k, v in interpreted.items() if k.startswith("strided")}
    count = max(len(tuning.STRIDED_FWD_CANDIDATES), len(tuning.STRIDED_WGRAD_CANDIDATES))
    assert len(strided) == 2 * count
    for key, errs in (runs | strided).items():
        errs = dict(errs)
        assert errs.pop("dtype_ok") == 1.0, key
        assert errs.pop("copies") == 0 or key in runs, key
        tol = TOLERANCE[key.rsplit("-", 1)[1]]
        assert all(err <= tol for err in errs.values()), (key, errs)


def test_construction_operators_are_exact(interpreted):
    """The Triton construction, forward and backward (gauss, bilinear, windows, rectangular, one
    element), against float64 (max|d| / max|ref| <= 1e-6) and the `dcls` package (<= 1e-5)."""
    cases = interpreted["construct"]
    assert len(cases) == len(CONSTRUCT_CASES)
    for name, errs in cases.items():
        assert errs.pop("shape_ok") == 1.0, name
        grads = 3 if CONSTRUCT_CASES[name][3] == "gauss" else 2
        assert len([k for k in errs if k.startswith("d")]) == grads, (name, errs)
        for key, err in errs.items():
            assert err <= (1e-5 if key.startswith("package") else 1e-6), (name, key, err)
    assert sum("package_kernel" in errs for errs in cases.values()) == 2


def test_construction_operators_pass_opcheck_on_their_triton_kernels(interpreted):
    ops = interpreted["construct_ops"]
    assert len(ops) == 4
    for name, checks in ops.items():
        assert checks and all(v == "SUCCESS" for v in checks.values()), (name, checks)


def test_custom_op_passes_opcheck(interpreted):
    """Schema, autograd registration, fake-tensor rule and AOT dispatch (dynamic shapes)."""
    ops = interpreted["ops"]
    for sample in ("opcheck0", "opcheck1"):
        assert ops[sample] and all(v == "SUCCESS" for v in ops[sample].values()), ops[sample]


def test_compiled_layer_keeps_the_triton_operator(interpreted):
    """torch.compile(fullgraph=True) of a Dcls2d on the CUDA dispatch: one graph, with the op."""
    ops = interpreted["ops"]
    assert ops["compile_graphs_with_op"] == [True]
    assert ops["compile_max_rel_err"] <= 1e-6


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_cuda_triton_kernels_match_float64_reference(name, dtype, monkeypatch):
    """The compiled kernels on the GPU, same cases and bounds as the interpreted ones."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    errs = errors(KERNEL_CASES[name], getattr(torch, dtype), device="cuda")
    print("EXACT", json.dumps({"case": name, "dtype": dtype, **errs}))  # for the session log
    assert errs.pop("dtype_ok") == 1.0
    copies = errs.pop("copies")
    assert copies == 0 or KERNEL_CASES[name][0] not in ("cl", "cl-gnchw")
    assert all(err <= TOLERANCE[dtype] for err in errs.values()), errs


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


@needs_cuda
def test_cuda_layer_builds_its_kernel_in_one_launch_each_way(monkeypatch):
    """On CUDA the construction operators run their Triton kernels (checked once against the
    PyTorch construction), in training and inference; same output and gradients as without."""
    from dcls_audio.dcls import construct_op

    torch.manual_seed(0)
    layer = Dcls2d(16, 16, 26, 23, padding=11, groups=16).cuda()
    x = torch.randn(2, 16, 20, 18, device="cuda")
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), list(layer.parameters()))
    assert construct_op.TRITON_CHECKED.get(x.device) is True
    monkeypatch.setenv("DCLS_FUSED_CONSTRUCT", "0")
    y_ref = layer(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(layer.parameters()))
    for a, b in zip((y, *grads), (y_ref, *grads_ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("name", MIXED_CASES)
def test_bf16_input_with_float32_kernel_returns_float32_parameter_grads(interpreted, name):
    errs = dict(interpreted[f"{name}-mixed"])
    assert errs.pop("dtype_ok") == 1.0
    errs.pop("copies")
    assert all(err <= TOLERANCE["bfloat16"] for err in errs.values()), errs
    # the kernel gradient is not rounded to bf16: float32 accumulation only
    assert errs["dw"] < 1e-5 and errs["db"] < 1e-5, errs


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

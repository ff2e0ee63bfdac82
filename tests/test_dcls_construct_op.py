"""The 2-D construction operators: one operator each way, opcheck, windows, exact gradients.

Their Triton kernels run under Triton's interpreter in ``tests/triton_interpreter.py`` (see
``test_dcls_kernels.py``); here the CPU implementation and the operators' registrations.
"""

import operator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dcls_audio.benchmarks.opcount import OpCounter, count_step
from dcls_audio.dcls import construct_kernel
from dcls_audio.dcls.construct_op import construct_2d, construct_2d_backward

WINDOWS = [None, ((4, 19), (5, 18)), ((0, 3), (20, 23)), ((2, 9), (0, 23))]


def _params(out_ch=6, count=26, dtype=torch.float32, gen_seed=0):
    gen = torch.Generator().manual_seed(gen_seed)
    w = torch.randn(out_ch, 1, count, generator=gen, dtype=dtype)
    p = (torch.rand(2, out_ch, 1, count, generator=gen, dtype=dtype) * 2 - 1) * 11
    s = torch.randn(2, out_ch, 1, count, generator=gen, dtype=dtype) * 0.4
    s.view(-1)[::5] = 0.0  # |SIG| at its kink: zero slope, as autograd's
    return w, p, s


def _build(inputs, version, window=None):
    """construct_kernel of (w, P[, SIG]) at 23 x 23."""
    sig = inputs[2] if len(inputs) == 3 else None
    return construct_kernel(inputs[0], inputs[1], sig, 23, version, window=window)


@pytest.mark.parametrize("version", ["gauss", "bilinear"])
def test_one_operator_forward_and_one_backward(version):
    """What a TorchDispatchMode sees of a 2-D construction and its backward: one op each."""
    w, p, s = (t.requires_grad_() for t in _params())
    inputs = [w, p, s] if version == "gauss" else [w, p]
    with OpCounter() as fwd:
        kernel = construct_kernel(w, p, s, 23, version, window=((4, 19), (5, 18)))
    upstream = torch.randn_like(kernel)
    with OpCounter() as bwd:
        torch.autograd.grad(kernel, inputs, upstream)
    assert fwd.counts == {"dcls_audio::construct_2d": 1}
    assert bwd.counts == {"dcls_audio::construct_2d_backward": 1}


def test_training_step_costs_about_four_operators_per_dcls_layer():
    """The benchmark's count on a small ConvNeXt: each DCLS layer adds its two operators and,
    where its stage shares P and SIG, the two gradient accumulations; the optimizer one group."""
    small = {"timm_kwargs": {"dims": [8, 16, 32, 64], "depths": [2, 1, 1, 1]}}
    dsc, dcls = (count_step("convnext_t", conv, model_overrides=small)
                 for conv in ("dsc", "dcls_gauss"))  # fmt: skip
    layers = dcls["dcls_layers"]
    assert layers == 5 and dsc["dcls_layers"] == 0
    extra = dcls["by_operator"]
    assert extra["dcls_audio::construct_2d"] == extra["dcls_audio::construct_2d_backward"] == 5
    # 2 per layer + 2 accumulations in the two-layer stage + the third group's AdamW step
    assert dcls["operators"] - dsc["operators"] <= 2 * layers + 2 + 12


@pytest.mark.parametrize("version", ["gauss", "bilinear"])
@pytest.mark.parametrize("window", WINDOWS)
def test_float32_matches_float64_with_windows(version, window):
    """Kernel and gradients (max|d| / max|ref| <= 1e-6) of every window against float64."""
    params = _params()
    live = 3 if version == "gauss" else 2
    ours = [t.clone().requires_grad_() for t in params[:live]]
    exact = [t.double().requires_grad_() for t in params[:live]]
    k, k64 = _build(ours, version, window), _build(exact, version, window)
    upstream = torch.randn(k64.shape, dtype=torch.float64)
    grads = torch.autograd.grad(k, ours, upstream.float())
    grads64 = torch.autograd.grad(k64, exact, upstream)
    for a, b in zip((k, *grads), (k64, *grads64), strict=True):
        assert a.dtype == torch.float32
        assert (a.double() - b).abs().max() <= 1e-6 * b.abs().max()


@pytest.mark.parametrize("version", ["gauss", "bilinear"])
def test_window_gradients_equal_full_kernel_gradients_masked(version):
    """A window is the full kernel's slice: its gradients are the full kernel's with the
    upstream gradient zero outside the window (normalisation over the full grid included)."""
    params = _params(dtype=torch.float64)
    live = 3 if version == "gauss" else 2
    (lo_h, hi_h), (lo_w, hi_w) = window = ((3, 17), (8, 23))
    full_in = [t.clone().requires_grad_() for t in params[:live]]
    part_in = [t.clone().requires_grad_() for t in params[:live]]
    full, part = _build(full_in, version), _build(part_in, version, window)
    upstream = torch.zeros_like(full)
    upstream[..., lo_h:hi_h, lo_w:hi_w] = torch.randn(*full.shape[:2], hi_h - lo_h, hi_w - lo_w,
                                                      dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(part, full[..., lo_h:hi_h, lo_w:hi_w], rtol=1e-12, atol=1e-14)
    grads_full = torch.autograd.grad(full, full_in, upstream)
    grads_part = torch.autograd.grad(part, part_in, upstream[..., lo_h:hi_h, lo_w:hi_w])
    for a, b in zip(grads_part, grads_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("version", ["gauss", "bilinear"])
def test_gradcheck_windowed_float64(version):
    w = torch.randn(2, 1, 3, dtype=torch.float64, requires_grad=True)
    # bilinear: positions off the integer kinks of the hat function
    base = torch.randint(-2, 2, (2, 2, 1, 3)).double()
    p = (base + torch.empty_like(base).uniform_(0.15, 0.85)).requires_grad_()
    s = (torch.rand(2, 2, 1, 3, dtype=torch.float64) + 0.1).requires_grad_()
    window = ((1, 5), (2, 7))
    if version == "gauss":
        fn = lambda w, p, s: construct_kernel(w, p, s, (6, 7), version, window=window)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (w, p, s))
    else:
        fn = lambda w, p: construct_kernel(w, p, None, (6, 7), version, window=window)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (w, p))


@pytest.mark.parametrize("version", ["gauss", "bilinear"])
def test_operators_pass_opcheck(version):
    """Schema, autograd registration, fake tensors and AOT dispatch (dynamic shapes) on the CPU."""
    w, p, s = _params(out_ch=3, count=5)
    gauss = version == "gauss"
    sig = s if gauss else None
    window = [1, 6, 0, 9]
    fwd = [w.requires_grad_(), p.requires_grad_(), sig, [7, 9], gauss, window]
    if gauss:
        sig.requires_grad_()
    grad = torch.randn(3, 1, 5, 9)
    profiles = [t.detach() for t in construct_2d(*fwd)[1:]]
    bwd = [grad, w.detach(), p.detach(), None if sig is None else sig.detach(), *profiles,
           [7, 9], gauss, window]  # fmt: skip
    empty = [w.new_empty(0)] * 4  # profiles not kept: recomputed
    for args in (bwd, bwd[:4] + empty + bwd[8:]):
        torch.testing.assert_close(construct_2d_backward(*args), construct_2d_backward(*bwd))
    for op, args in ((construct_2d, fwd), (construct_2d_backward, bwd)):
        checks = torch.library.opcheck(op, args, raise_exception=False)
        assert checks and all(v == "SUCCESS" for v in checks.values()), (op, checks)


def test_cuda_branch_traces_to_one_triton_kernel_each():
    """Traced for CUDA tensors (fake: no GPU needed), each operator is one Triton kernel call:
    what inductor compiles; what else runs is an allocation of the result."""
    pytest.importorskip("triton")
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm

    def both(w, p, s, g):
        window = [4, 19, 5, 18]
        out = construct_2d(w, p, s, [23, 23], True, window)
        return out, construct_2d_backward(g, w, p, s, *out[1:], [23, 23], True, window)

    with FakeTensorMode():
        w, p, s = (torch.empty(shape, device="cuda") for shape in ((4, 1, 26), (2, 4, 1, 26),
                                                                      (2, 4, 1, 26)))  # fmt: skip
        g = torch.empty(4, 1, 15, 13, device="cuda")
        aot_function(both, fw_compiler=keep)(w, p, s, g)
    calls = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    kernels = [t for t in calls if "triton_kernel_wrapper" in str(t)]
    compute = [t for t in calls if "triton_kernel_wrapper" not in str(t)
               and t is not operator.getitem and "empty" not in str(t)]  # fmt: skip
    assert len(kernels) == 2 and not compute, calls


def test_operators_never_materialise_count_times_kernel():
    """The CPU implementations hold nothing bigger than the kernel or the per-axis profiles."""
    from dcls_audio.dcls import construct_op

    out_ch, count, size = 16, 26, 13
    w, p, s = _params(out_ch, count)
    numels = []

    class _Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    numels.append(t.numel())
            return out

    window = [0, size, 0, size]
    with _Record():
        k, profiles = construct_op._forward_torch(w, p, s, [size, size], window)
        construct_op._backward_torch(torch.ones_like(k), w, p, s, profiles, [size, size], window)
    assert max(numels) <= out_ch * size * max(size, count)

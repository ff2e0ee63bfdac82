"""Dcls1d/2d/3d layers: reference parity, init, clamping, eval cache, exact cropping, errors."""

import itertools
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcls_audio.dcls import Dcls1d, Dcls2d, Dcls3d, DclsNd

logging.getLogger().setLevel(logging.ERROR)
ref_modules = pytest.importorskip("DCLS.construct.modules")

OURS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}


def _close(actual, expected):
    """rtol 1e-5, absolute slack 1e-5 of the tensor's largest magnitude (float32 sums, FFT)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _reference_layer(ndim, in_ch, out_ch, count, size, stride, padding, groups, version):
    ref_version = "v1" if version == "bilinear" else version
    kw = {"stride": stride, "padding": padding, "dilated_kernel_size": size, "groups": groups}
    if ndim == 2:
        kw["use_implicit_gemm"] = False
    cls = {1: ref_modules.Dcls1d, 2: ref_modules.Dcls2d, 3: ref_modules.Dcls3d}[ndim]
    return cls(in_ch, out_ch, count, version=ref_version, **kw)


LAYER_CASES = [
    # ndim, in, out, count, size, stride, padding, groups, input spatial
    (1, 4, 6, 3, 7, 1, 3, 2, (20,)),
    (1, 3, 3, 5, 9, 2, 4, 3, (5,)),  # input smaller than the kernel: cropped path
    (2, 8, 8, 5, 9, 1, 4, 8, (12, 11)),
    (2, 3, 4, 2, 5, 2, 1, 1, (9, 8)),
    (2, 6, 6, 26, 23, 1, 11, 6, (8, 7)),  # ConvNeXt's last stage: cropped
    (3, 2, 4, 3, 5, 1, 2, 2, (6, 5, 7)),
    (2, 4, 4, 6, 23, 1, 11, 4, (30, 28)),  # large depthwise kernel: FFT path on the CPU
]


@pytest.mark.parametrize("version", ["gauss", "bilinear"])
@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_matches_reference_package(case, version):
    ndim, in_ch, out_ch, count, size, stride, padding, groups, spatial = case
    torch.manual_seed(3)
    ref = _reference_layer(ndim, in_ch, out_ch, count, size, stride, padding, groups, version)
    torch.manual_seed(3)
    ours = OURS[ndim](in_ch, out_ch, count, size, stride, padding, groups, version=version)
    # Same seed, same draws: identical initialisation up to the axis convention.
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
    torch.testing.assert_close(ours.P, ref.P.flip(0), rtol=0, atol=0)
    if version == "gauss":
        torch.testing.assert_close(ours.SIG, ref.SIG.flip(0), rtol=0, atol=0)
    else:
        assert ours.SIG is None and ref.SIG is None
    with torch.no_grad():  # move positions off their init so the test is not trivial
        ref.P.add_(torch.randn_like(ref.P))
        ours.P.copy_(ref.P.flip(0))

    x = torch.randn(2, in_ch, *spatial)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    _close(y_ours, y_ref)
    g = torch.randn_like(y_ref)
    (y_ref * g).sum().backward()
    (y_ours * g).sum().backward()
    _close(x_ours.grad, x_ref.grad)
    _close(ours.weight.grad, ref.weight.grad)
    _close(ours.bias.grad, ref.bias.grad)
    _close(ours.P.grad, ref.P.grad.flip(0))
    if version == "gauss":
        _close(ours.SIG.grad, ref.SIG.grad.flip(0))


def test_parameter_shapes_and_init():
    layer = Dcls2d(6, 4, 5, (5, 9), groups=2)
    assert layer.weight.shape == (4, 3, 5)
    assert layer.P.shape == layer.SIG.shape == (2, 4, 3, 5)
    assert torch.all(layer.SIG == 0.23)
    assert layer.P[0].abs().max() <= 2 and layer.P[1].abs().max() <= 4
    big = Dcls1d(1, 256, 26, 3, version="bilinear")
    assert big.SIG is None and "SIG" not in dict(big.named_parameters())
    assert big.P.abs().max() == 1  # N(0, 0.5) clamped to +-1 reaches the bound
    assert 0.4 < big.P.std() < 0.55
    fan_in = 1 * 26
    assert big.weight.abs().max() <= (6 / ((1 + 5) * fan_in)) ** 0.5 + 1e-6
    assert big.bias.abs().max() <= fan_in**-0.5
    assert Dcls3d(2, 2, 1, 3, bias=False).bias is None


def test_clamp_parameters_per_axis():
    layer = Dcls2d(2, 2, 8, (5, 9), groups=2)
    with torch.no_grad():
        layer.P.normal_(0, 20)
    layer.clamp_parameters()
    assert layer.P[0].min() == -2 and layer.P[0].max() == 2
    assert layer.P[1].min() == -4 and layer.P[1].max() == 4
    even = Dcls1d(1, 1, 4, 6)
    with torch.no_grad():
        even.P.copy_(torch.tensor([-9.0, -3.2, 2.5, 9.0]).view(1, 1, 1, 4))
    even.clamp_parameters()
    assert even.P.flatten().tolist() == [-3.0, -3.0, 2.0, 2.0]  # cells 0 and 5: on the grid


def test_integer_bilinear_positions_equal_plain_conv():
    layer = Dcls2d(3, 3, 4, (7, 9), padding=(3, 4), groups=3, version="bilinear")
    positions = torch.tensor([[-3, 0, 2, 3], [4, -4, 0, 1]], dtype=torch.float32)
    with torch.no_grad():
        layer.P.copy_(positions.view(2, 1, 1, 4).expand(2, 3, 1, 4))
    dense = torch.zeros(3, 1, 7, 9)
    for k in range(4):
        dense[:, 0, 3 + int(positions[0, k]), 4 + int(positions[1, k])] += layer.weight[:, 0, k]
    x = torch.randn(2, 3, 10, 12)
    expected = F.conv2d(x, dense, layer.bias, padding=(3, 4), groups=3)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


class _Counter:
    def __init__(self, layer):
        self.calls = 0
        self.inner = layer.kernel

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, foreach=False),
    "sgd_foreach": lambda p: torch.optim.SGD(p, lr=0.1, foreach=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.1),
    "adamw_foreach": lambda p: torch.optim.AdamW(p, lr=0.1, foreach=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.1, fused=True),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_eval_cache_reused_and_invalidated(opt):
    layer = Dcls2d(4, 4, 3, 7, padding=3, groups=4)
    counter = _Counter(layer)
    layer.kernel = counter
    x = torch.randn(1, 4, 9, 9)
    optimizer = OPTIMIZERS[opt](layer.parameters())

    layer.eval()
    with torch.no_grad():
        y0 = layer(x)
        torch.testing.assert_close(layer(x), y0)
    assert counter.calls == 1  # reused

    layer.train()
    layer(x).square().sum().backward()
    optimizer.step()
    assert counter.calls == 2  # training builds every time
    layer.eval()
    with torch.no_grad():
        y1 = layer(x)
        layer(x)
    assert counter.calls == 3  # rebuilt once after the step
    assert not torch.allclose(y1, y0)
    expected = F.conv2d(x, counter.inner(), layer.bias, padding=3, groups=4)
    torch.testing.assert_close(y1, expected)

    optimizer.zero_grad()
    # Optimizer step while staying in eval mode (e.g. fine-tuning with frozen norms).
    with torch.enable_grad():
        layer(x).sum().backward()
    assert counter.calls == 4  # grad enabled: never served from the cache
    optimizer.step()
    with torch.no_grad():
        y2 = layer(x)
    assert counter.calls == 5 and not torch.allclose(y2, y1)

    state = {k: v + 0.5 for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)
    with torch.no_grad():
        layer(x)
    assert counter.calls == 6

    layer.train()
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert counter.calls == 7  # .train() dropped the cache
    layer.P.data.mul_(100)  # .data writes bump no version counter of the parameter
    with torch.no_grad():
        layer(x)
    assert counter.calls == 8
    layer.clamp_parameters()
    with torch.no_grad():
        layer(x)
        layer(x)
    assert counter.calls == 9


def _mutate(layer: Dcls2d, how: str) -> Dcls2d:
    """Change the layer's weight, P or SIG in one of the ways that bypass version counters."""
    with torch.no_grad():
        if how == "data_mul":
            layer.weight.data.mul_(-2)
        elif how == "data_copy":
            layer.SIG.data.copy_(torch.rand_like(layer.SIG))
        elif how == "data_assign":
            layer.P.data = layer.P.data.flip(-1).clone()
        elif how == "no_grad_add":
            layer.P.add_(0.7)
        elif how == "load_state_dict":
            layer.load_state_dict({k: v * 0.5 for k, v in layer.state_dict().items()})
        elif how == "to_double":
            layer = layer.double()
        elif how == "fused_adamw":
            opt = torch.optim.AdamW(layer.parameters(), lr=0.3, fused=True)
            for p in layer.parameters():
                p.grad = torch.randn_like(p)
            opt.step()
    return layer


@pytest.mark.parametrize("impl", ["auto", "fft", "direct", "triton"])
@pytest.mark.parametrize(
    "how",
    ["data_mul", "data_copy", "data_assign", "no_grad_add", "load_state_dict", "to_double",
     "fused_adamw"],
)  # fmt: skip
def test_eval_cache_never_serves_a_stale_kernel(how, impl):
    layer = Dcls2d(4, 4, 5, 23, padding=11, groups=4).eval()
    layer.conv_impl = impl
    x = torch.randn(2, 4, 30, 28)  # large enough for the CPU FFT path under "auto" and "fft"
    with torch.no_grad():
        before = layer(x)
        layer = _mutate(layer, how)
        after = layer(x.to(layer.weight.dtype))
        expected = F.conv2d(x.to(after.dtype), layer.kernel(), layer.bias, padding=11, groups=4)
    assert not torch.allclose(after.double(), before.double())
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_eval_cache_on_the_cuda_dispatch_route_sees_data_writes(monkeypatch):
    """The kernel handed to the CUDA depthwise dispatcher is fresh after a ``.data`` write."""
    kernels = []
    monkeypatch.setattr("dcls_audio.dcls.layers.cuda_depthwise_applies", lambda *a: True)

    def spy(x, kernel, bias, pads, training, path=None):
        kernels.append(kernel.clone())
        return F.conv2d(x, kernel, bias, padding=pads[0][0], groups=x.shape[1])

    monkeypatch.setattr("dcls_audio.dcls.layers.depthwise_conv2d", spy)
    layer = Dcls2d(3, 3, 4, 9, padding=4, groups=3).eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        layer(x)
        layer.weight.data.mul_(3)
        layer(x)
    torch.testing.assert_close(kernels[1], 3 * kernels[0])
    torch.testing.assert_close(kernels[1], layer.kernel().detach())


def test_eval_cache_holds_an_exact_snapshot():
    layer = Dcls2d(2, 2, 3, 7, padding=3, groups=2).eval()
    with torch.no_grad():
        layer(torch.randn(1, 2, 9, 9))
    window, snapshot, kernel = layer._cache
    assert window is None and len(snapshot) == 3 and kernel.shape == (2, 1, 7, 7)
    params = layer._kernel_params()
    assert all(s.data_ptr() != p.data_ptr() for s, p in zip(snapshot, params, strict=True))
    layer.float()  # any .to()/.float()/.cuda() drops the cache
    assert layer._cache is None


CROP_CASES = [
    # size, spatial, stride, padding
    (9, (3, 4), 1, 4),
    (9, (4, 5), 2, 4),
    (8, (3, 5), 1, 4),
    (8, (4, 3), 2, 4),
    (8, (5, 2), 1, 3),
    (23, (8, 7), 1, 11),
    (23, (8, 7), 2, 11),
    (9, (2, 6), 1, (4, 2)),
    (9, (6, 3), 2, (7, 4)),
    ((5, 11), (2, 3), 1, (2, 5)),
    (9, (12, 10), 1, 4),  # large enough: nothing to crop
]


@pytest.mark.parametrize("size,spatial,stride,padding", CROP_CASES)
def test_cropping_is_exact(size, spatial, stride, padding):
    layer = Dcls2d(3, 3, 6, size, stride=stride, padding=padding, groups=3)
    with torch.no_grad():
        layer.P.uniform_(-6, 6)
    layer.clamp_parameters()
    x = torch.randn(2, 3, *spatial, requires_grad=True)
    full = F.conv2d(x, layer.kernel(), layer.bias, stride=stride, padding=padding, groups=3)
    grads_full = torch.autograd.grad(full.square().sum(), [x, layer.weight, layer.P, layer.SIG])
    out = layer(x)
    assert out.shape == full.shape
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), [x, layer.weight, layer.P, layer.SIG])
    for a, b in zip(grads, grads_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Brute force: taps that meet a real input sample for at least one output position.
    window, _ = layer._plan(spatial)
    pads = layer._pads
    cropped = False
    for d, (n, k, s) in enumerate(
        zip(spatial, layer.dilated_kernel_size, layer.stride, strict=True)
    ):
        left = pads[d][0]
        useful = [
            j for j in range(k) if any(0 <= o * s - left + j < n for o in range(full.shape[2 + d]))
        ]
        lo, hi = (0, k) if window is None else window[d]
        assert lo <= useful[0] and useful[-1] < hi <= k
        cropped |= len(useful) < k
    assert (window is not None) == cropped
    if size == 23 and stride == 1:
        assert window == ((4, 19), (5, 18))  # 15 x 13 instead of 23 x 23
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), full, rtol=1e-5, atol=1e-6)


def test_crop_planner_exhaustive_1d():
    """Every small (length, size, left, right, stride): same output grid, same tap/sample pairs."""
    from dcls_audio.dcls.layers import _plan_axis

    planned = fallback = 0
    for length, k, left, right, stride in itertools.product(
        range(1, 8), range(1, 10), range(10), range(10), (1, 2, 3)
    ):
        if left > k or right > k or length + left + right < k:
            continue
        n_out = (length + left + right - k) // stride + 1
        plan = _plan_axis(length, k, left, right, stride)
        if plan is None:
            continue
        (lo, hi), (pl, pr) = plan
        assert 0 <= lo < hi <= k and pl >= 0 and hi - lo < k
        planned += 1
        fallback += pl != pr
        assert (length + pl + pr - (hi - lo)) // stride + 1 == n_out
        for o in range(n_out):
            # (tap, sample) pairs that touch real input, before and after cropping.
            before = {(j, o * stride - left + j) for j in range(k)}
            after = {(lo + j, o * stride - pl + j) for j in range(hi - lo)}
            inside = {(j, i) for j, i in before | after if 0 <= i < length}
            assert inside <= before and inside <= after, (length, k, left, right, stride, o)
    assert planned > 1000 and fallback > 0


@pytest.mark.parametrize("ndim", [1, 3])
def test_cropping_exact_in_1d_and_3d(ndim):
    spatial = {1: (4,), 3: (2, 5, 3)}[ndim]
    layer = OURS[ndim](2, 2, 4, 7, stride=2, padding=3, groups=2)
    x = torch.randn(1, 2, *spatial)
    full = CONV[ndim](x, layer.kernel(), layer.bias, stride=2, padding=3, groups=2)
    assert layer._plan(spatial)[0] is not None
    torch.testing.assert_close(layer(x), full, rtol=1e-5, atol=1e-6)


FFT_CASES = [
    # size, spatial, padding, batched
    (23, (30, 28), 11, True),
    ((8, 12), (9, 15), (3, 7), True),
    (9, (10, 11), 0, False),
    (5, (6, 4), (9, 2), True),  # padding larger than the kernel
    ((6, 4), (7, 5), "same", True),  # asymmetric padding
    (23, (8, 7), 11, True),  # cropped kernel
]


@pytest.mark.parametrize("size,spatial,padding,batched", FFT_CASES)
def test_fft_path_matches_direct_conv(size, spatial, padding, batched):
    from dcls_audio.dcls.fftconv import fft_depthwise_conv2d

    layer = Dcls2d(5, 5, 7, size, padding=padding, groups=5).double()
    with torch.no_grad():
        layer.P.uniform_(-10, 10)
    layer.clamp_parameters()
    x = torch.randn(*((2,) if batched else ()), 5, *spatial, dtype=torch.float64)
    x.requires_grad_()
    params = [x, layer.weight, layer.bias, layer.P, layer.SIG]
    outs, grads = {}, {}
    for impl in ("direct", "fft"):
        layer.conv_impl = impl
        outs[impl] = layer(x)
        grads[impl] = torch.autograd.grad(outs[impl].sin().sum(), params)
    torch.testing.assert_close(outs["fft"], outs["direct"], rtol=1e-10, atol=1e-10)
    for a, b in zip(grads["fft"], grads["direct"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # The function itself against F.conv2d with explicit asymmetric padding.
    kernel = layer.kernel()
    kh, kw = kernel.shape[-2:]
    pads = ((kh // 2 + 1, kh - 2 - kh // 2), (kw // 2, kw - 1 - kw // 2))
    flat = (pads[1][0], pads[1][1], pads[0][0], pads[0][1])
    expected = F.conv2d(F.pad(x, flat), kernel, layer.bias, groups=5)
    torch.testing.assert_close(
        fft_depthwise_conv2d(x, kernel, layer.bias, pads), expected, rtol=1e-10, atol=1e-10
    )


def test_fft_auto_selection():
    from dcls_audio.dcls.fftconv import prefer_fft

    stage1 = torch.empty(8, 96, 64, 62)
    kernel = torch.empty(96, 1, 23, 23)
    pads = ((11, 11), (11, 11))
    assert prefer_fft(stage1, kernel, 96, (1, 1), pads)
    assert prefer_fft(torch.empty(2, 4, 30, 28), kernel[:4], 4, (1, 1), pads)  # LAYER_CASES[-1]
    assert not prefer_fft(stage1, torch.empty(96, 1, 7, 7), 96, (1, 1), ((3, 3),) * 2)
    assert not prefer_fft(stage1, kernel, 96, (2, 2), pads)  # strided: direct
    assert not prefer_fft(stage1, torch.empty(96, 2, 23, 23), 48, (1, 1), pads)  # not depthwise
    assert not prefer_fft(stage1.half(), kernel.half(), 96, (1, 1), pads)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not prefer_fft(stage1, kernel, 96, (1, 1), pads)
    # inference, against the channels_last direct forward (measured, docs/benchmarks.md): the
    # 23x23 layers of ConvNeXt-T's stages 1-3 gain, its cropped 15x13 stage 4 and the demo's
    # 11x11 kernel on a 32x31 map do not
    assert prefer_fft(stage1, kernel, 96, (1, 1), pads, training=False)
    stage3 = torch.empty(8, 384, 16, 15)
    assert prefer_fft(stage3, kernel[:1].expand(384, 1, 23, 23), 384, (1, 1), pads)
    assert prefer_fft(stage3, kernel[:1].expand(384, 1, 23, 23), 384, (1, 1), pads, None, False)
    stage4 = torch.empty(8, 768, 8, 7)
    cropped = torch.empty(768, 1, 15, 13)
    assert not prefer_fft(stage4, cropped, 768, (1, 1), ((7, 7), (6, 6)), training=False)
    small = torch.empty(48, 1, 11, 11)
    demo2 = torch.empty(8, 48, 32, 31)
    assert not prefer_fft(demo2, small, 48, (1, 1), ((5, 5),) * 2, training=False)
    assert prefer_fft(stage3, kernel[:1].expand(384, 1, 23, 23), 384, (1, 1), pads, 0.0, False)
    layer = Dcls2d(4, 4, 3, 5, groups=4)
    layer.conv_impl = "winograd"
    with pytest.raises(ValueError, match="conv_impl must be"):
        layer(torch.randn(1, 4, 8, 8))


def test_inference_paths_equal_the_plain_conv_on_nchw_and_channels_last():
    torch.manual_seed(0)
    layer = Dcls2d(6, 6, 5, 9, padding=4, groups=6).eval()
    with torch.no_grad():
        layer.P.uniform_(-4, 4)
    x = torch.randn(2, 6, 12, 10)
    expected = F.conv2d(x, layer.kernel().detach(), layer.bias.detach(), padding=4, groups=6)
    with torch.no_grad():
        for impl in ("direct", "fft", "auto"):
            layer.conv_impl = impl
            for inp in (x, x.contiguous(memory_format=torch.channels_last)):
                torch.testing.assert_close(layer(inp), expected, rtol=1e-5, atol=1e-5)
        # the direct inference path runs in channels_last, PyTorch's fast CPU depthwise path
        layer.conv_impl = "direct"
        assert layer(x).is_contiguous(memory_format=torch.channels_last)
    # with autograd the layer keeps the input's layout for the direct conv and stays exact
    out = layer(x.requires_grad_())
    assert out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_and_to_conv(mode):
    layer = Dcls2d(2, 4, 3, 5, padding=2, padding_mode=mode)
    conv = layer.to_conv()
    assert isinstance(conv, nn.Conv2d) and conv.padding_mode == mode
    x = torch.randn(1, 2, 6, 7)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_padding_even_kernel_and_unbatched_input():
    layer = Dcls2d(2, 2, 3, (4, 6), padding="same")
    x = torch.randn(2, 9, 8)
    expected = F.conv2d(x, layer.kernel(), layer.bias, padding="same")
    out = layer(x)
    assert out.shape == (2, 9, 8)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    tiny = torch.randn(1, 2, 2, 3)
    torch.testing.assert_close(
        layer(tiny), F.conv2d(tiny, layer.kernel(), layer.bias, padding="same"), rtol=1e-5,
        atol=1e-6,
    )  # fmt: skip


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="kernel_count must be an int >= 1"):
        Dcls2d(4, 4, 0, 7)
    with pytest.raises(ValueError, match="version must be one of"):
        Dcls2d(4, 4, 3, 7, version="v2")
    with pytest.raises(ValueError, match="must have 2 entries"):
        Dcls2d(4, 4, 3, (7, 7, 7))
    with pytest.raises(ValueError, match="divisible by groups"):
        Dcls2d(4, 6, 3, 7, groups=4)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        Dcls1d(4, 4, 3, 7, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding must be a non-negative int"):
        Dcls3d(4, 4, 3, 7, padding=(1, 1))
    with pytest.raises(ValueError, match="requires stride 1"):
        Dcls2d(4, 4, 3, 7, stride=2, padding="same")
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        Dcls1d(0, 4, 3, 7)
    with pytest.raises(ValueError, match="expects a 4-D batched"):
        Dcls2d(1, 1, 1, 3)(torch.randn(5))
    with pytest.raises(TypeError, match="abstract"):
        DclsNd(1, 1, 1, 3)


def test_extra_repr_and_state_dict_keys():
    layer = Dcls2d(4, 4, 3, 7, padding=3, groups=4, bias=False, version="bilinear")
    text = repr(layer)
    assert "kernel_count=3" in text and "bilinear" in text and "bias=False" in text
    assert set(layer.state_dict()) == {"weight", "P"}

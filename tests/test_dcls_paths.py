"""DCLS convolution paths: exact cropping of large kernels, the FFT path, NCHW and channels_last."""

import itertools
import logging

import pytest
import torch
import torch.nn.functional as F

from dcls_audio.dcls import Dcls1d, Dcls2d, Dcls3d

logging.getLogger().setLevel(logging.ERROR)

OURS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _close(actual, expected):
    """rtol 1e-5, absolute slack 1e-5 of the tensor's largest magnitude (float32 sums, FFT)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


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

"""Dcls1d/2d/3d layers: reference parity, init, clamping, padding modes, errors."""

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

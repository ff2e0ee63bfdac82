"""replace_depthwise / clamp_dcls / is_dcls_position on timm and hand-made models."""

import pytest
import timm
import torch
from torch import nn

from dcls_audio.dcls import Dcls2d, DclsNd, clamp_dcls, is_dcls_position, replace_depthwise


@pytest.fixture(scope="module")
def convnext_swapped():
    torch.manual_seed(0)
    model = timm.create_model("convnext_tiny", pretrained=False, num_classes=10)
    names = replace_depthwise(model)
    return model, names


def test_convnext_tiny_swaps_18_and_shares_4(convnext_swapped):
    model, names = convnext_swapped
    assert len(names) == 18
    assert names[0] == "stages.0.blocks.0.conv_dw" and names[-1] == "stages.3.blocks.2.conv_dw"
    layers = [model.get_submodule(n) for n in names]
    assert all(isinstance(m, Dcls2d) for m in layers)
    assert not any(
        isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1
        for m in model.modules()
    )
    assert len({id(m.P) for m in layers}) == 4
    assert len({id(m.SIG) for m in layers}) == 4
    assert len({id(m.weight) for m in layers}) == 18
    channels = {m.in_channels: m.P for m in layers}
    assert sorted(channels) == [96, 192, 384, 768]
    for m in layers:
        assert m.P is channels[m.in_channels]
        assert m.padding == (11, 11) and m.stride == (1, 1) and m.groups == m.in_channels
        assert m.kernel_count == 26 and m.dilated_kernel_size == (23, 23) and m.version == "gauss"
        assert m.bias is not None and torch.all(m.bias == 0)
    weights = torch.cat([m.weight.flatten() for m in layers])
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    position_names = [n for n, _ in model.named_parameters() if is_dcls_position(n)]
    assert len(position_names) == 8  # 4 P + 4 SIG, each listed once
    assert "stages.0.blocks.0.conv_dw.P" in position_names


def test_swapped_convnext_runs_and_shares_gradients(convnext_swapped):
    model, names = convnext_swapped
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    assert out.shape == (1, 10)
    out.sum().backward()
    first = model.get_submodule(names[0])
    assert first.P.grad is not None and first.P.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_clamp_dcls_clamps_every_layer_including_shared(convnext_swapped):
    model, names = convnext_swapped
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DclsNd):
                m.P.mul_(100)
    clamp_dcls(model)
    for n in names:
        assert model.get_submodule(n).P.abs().max() <= 11


def test_without_sharing_every_layer_owns_its_positions():
    model = timm.create_model("convnext_atto", pretrained=False)
    names = replace_depthwise(model, kernel_count=5, dilated_kernel_size=9, share_positions=False)
    layers = [model.get_submodule(n) for n in names]
    assert len(layers) == 12 and len({id(m.P) for m in layers}) == 12  # depths 2, 2, 6, 2


def test_position_init_normal_clusters_uniform_spreads():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False)
    names = replace_depthwise(model, kernel_count=26, dilated_kernel_size=11)
    normal = torch.cat([model.get_submodule(n).P.detach().flatten() for n in names])
    model = timm.create_model("convnext_atto", pretrained=False)
    names = replace_depthwise(
        model, kernel_count=26, dilated_kernel_size=11, position_init="uniform"
    )
    layers = [model.get_submodule(n) for n in names]
    uniform = torch.cat([m.P.detach().flatten() for m in layers])
    assert normal.std() == pytest.approx(0.5, abs=0.05) and normal.abs().max() <= 5
    assert uniform.min() >= -5 and uniform.max() <= 5
    assert uniform.std() == pytest.approx(10 / 12**0.5, rel=0.1)  # U(-5, 5)
    assert (uniform.abs() > 3).float().mean() == pytest.approx(0.4, abs=0.05)
    assert layers[0].P is layers[1].P  # sharing is unchanged
    with pytest.raises(ValueError, match="position_init='spread'; expected one of"):
        replace_depthwise(_Toy(), position_init="spread")


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 7, padding=3, groups=4, bias=False)
        self.dw_stride = nn.Conv2d(4, 4, 7, stride=2, padding=3, groups=4)
        self.dw3 = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # other kernel size: kept
        self.dense = nn.Conv2d(4, 8, 7, padding=3)  # not depthwise: kept
        self.grouped = nn.Conv2d(8, 8, 7, padding=3, groups=2)  # not depthwise: kept
        self.dilated = nn.Conv2d(8, 8, 7, padding=6, dilation=2, groups=8)  # dilated: kept

    def forward(self, x):
        x = self.dw3(self.dw_stride(self.dw(x)))
        return self.dilated(self.grouped(self.dense(x)))


def test_toy_model_selection_stride_bias_and_shapes():
    model = _Toy()
    x = torch.randn(2, 4, 16, 16)
    shape = model(x).shape
    names = replace_depthwise(model, dilated_kernel_size=9, kernel_count=4, version="bilinear")
    assert names == ["dw", "dw_stride"]
    assert model.dw.bias is None and model.dw_stride.bias is not None
    assert model.dw_stride.stride == (2, 2) and model.dw_stride.padding == (4, 4)
    assert model.dw.P is model.dw_stride.P and model.dw.SIG is None
    assert isinstance(model.dw3, nn.Conv2d) and isinstance(model.dense, nn.Conv2d)
    assert model(x).shape == shape
    assert replace_depthwise(model) == []  # nothing left to swap


def test_is_dcls_position():
    assert is_dcls_position("stages.0.blocks.0.conv_dw.P")
    assert is_dcls_position("module.conv.SIG") and is_dcls_position("P")
    assert not is_dcls_position("stages.0.blocks.0.conv_dw.weight")
    assert not is_dcls_position("head.fc.bias") and not is_dcls_position("layer.Pos")


def test_bad_arguments_raise_clear_errors():
    model = _Toy()
    with pytest.raises(ValueError, match="kernel_count must be an int >= 1"):
        replace_depthwise(model, kernel_count=0)
    with pytest.raises(ValueError, match="version must be one of"):
        replace_depthwise(model, version="v0")
    with pytest.raises(ValueError, match="dilated_kernel_size must be a positive int"):
        replace_depthwise(model, dilated_kernel_size=(23, 23))
    with pytest.raises(ValueError, match="wrap it in a module"):
        replace_depthwise(nn.Conv2d(3, 3, 7, groups=3))
    assert isinstance(model.dw, nn.Conv2d)  # failed calls changed nothing

"""Model initialisation: ImageNet weights into the audio models, file formats, errors; the table."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import cfgs
from torch import nn

from dcls_audio.models import build_model
from dcls_audio.models.stem import model_family, stem_conv_name


def stem_conv(model: nn.Module) -> nn.Module:
    return model.get_submodule(stem_conv_name(model_family(model)))


@pytest.fixture(scope="module")
def atto_checkpoint(tmp_path_factory):
    """An ImageNet-shaped timm convnext_atto (3 input channels, 1000 classes) saved to disk."""
    torch.manual_seed(123)
    src = timm.create_model("convnext_atto", pretrained=False, num_classes=1000)
    path = tmp_path_factory.mktemp("ckpt") / "convnext_atto.pth"
    torch.save(src.state_dict(), path)
    return path, src.state_dict()


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _check_loaded(net: nn.Module, source: dict, report, stem: str, classifier: str) -> None:
    """init=imagenet: everything but the image stem and the classifier loads, exactly."""
    own = net.state_dict()
    assert report.loaded, "nothing loaded"
    for key in report.loaded:
        torch.testing.assert_close(own[key], source[key], rtol=0, atol=0)
    body = [k for k in source if not _under(k, stem) and not _under(k, classifier)]
    assert set(report.loaded) == set(body)
    assert report.skipped["classifier"] == sorted(k for k in source if _under(k, classifier))
    assert report.skipped["image stem"] == sorted(k for k in source if _under(k, stem))
    assert report.new["classifier"] == sorted(k for k in own if _under(k, classifier))
    assert report.new["audio stem"] == sorted(k for k in own if _under(k, stem_conv_name(
        model_family(net))))  # fmt: skip
    # the classifier and the audio stem keep their fresh init, not the file's tensors
    head_w = net.get_submodule(classifier).weight
    assert head_w.shape[0] == 527 and not torch.equal(head_w, source[classifier + ".weight"][:527])


def _imagenet(model: str, conv: str, path) -> tuple[dict, dict]:
    return cfgs(model, conv, pretrained=str(path), init="imagenet")


@pytest.mark.parametrize(
    ("model", "timm_name", "stem", "classifier"),
    [
        ("convnext_atto", "convnext_atto", "stem.0", "head.fc"),
        ("convformer_s18", "convformer_s18", "stem.conv", "head.fc.fc2"),
        ("fastvit_sa24", "fastvit_sa24", "stem", "head.fc"),
    ],
)
def test_pretrained_loads_matching_weights(tmp_path, model, timm_name, stem, classifier):
    torch.manual_seed(5)
    # a 527-class source: the classifier matches in shape and must still be skipped
    src = timm.create_model(timm_name, pretrained=False, num_classes=527).state_dict()
    path = tmp_path / "imagenet.pth"
    torch.save(src, path)
    torch.manual_seed(6)
    net = build_model(*_imagenet(model, "dsc", path))
    report = net.build_info["pretrained"]
    _check_loaded(net, src, report, stem, classifier)
    assert net.build_info["init_record"]["mode"] == "imagenet"
    assert type(stem_conv(net)) is nn.Conv2d and stem_conv(net).in_channels == 1


def test_dsc_imagenet_weights_do_not_load_into_a_dcls_model(atto_checkpoint):
    """DCLS rows start from DCLS ImageNet files; a DSC file is a named error, never ignored."""
    path, _ = atto_checkpoint
    with pytest.raises(ValueError, match="holds DSC layers.*choose conv=dsc"):
        build_model(*_imagenet("convnext_atto", "dcls_gauss", path))


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp", "safetensors"])
def test_pretrained_file_formats(tmp_path, atto_checkpoint, wrap):
    _, src = atto_checkpoint
    path = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pt")
    if wrap == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.items()}, str(path))
    else:
        obj = {
            "plain": src,
            "state_dict": {"state_dict": src, "epoch": 3},
            "model": {"model": src, "optimizer": {}},
            "ddp": {"module." + k: v for k, v in src.items()},
        }[wrap]
        torch.save(obj, path)
    net = build_model(*_imagenet("convnext_atto", "dsc", path))
    _check_loaded(net, src, net.build_info["pretrained"], "stem.0", "head.fc")


def test_pretrained_errors(tmp_path, atto_checkpoint):
    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        build_model(*_imagenet("convnext_atto", "dsc", tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        build_model(*_imagenet("convnext_atto", "dsc", garbage))
    # a checkpoint of another architecture: names match, shapes do not
    other = tmp_path / "femto.pth"
    torch.save(timm.create_model("convnext_femto", num_classes=1000).state_dict(), other)
    want = r"'stages.0.blocks.0.conv_dw.weight: file \(48, 1, 7, 7\) vs model \(40, 1, 7, 7\)'"
    with pytest.raises(ValueError, match="shape mismatches .*" + want):
        build_model(*_imagenet("convnext_atto", "dsc", other))
    # a partial file is refused, naming what is missing
    path, src = atto_checkpoint
    part = tmp_path / "part.pth"
    torch.save(dict(list(src.items())[: len(src) // 3]), part)
    with pytest.raises(ValueError, match=r"model tensors not in the file \['head.norm.bias'"):
        build_model(*_imagenet("convnext_atto", "dsc", part))
    with pytest.raises(ValueError, match="model.init=none"):
        build_model(*cfgs("convnext_atto", "dsc", pretrained=str(path)))
    with pytest.raises(ValueError, match="model.init=finetune needs model.pretrained"):
        build_model(*cfgs("convnext_atto", "dsc", init="finetune"))
    with pytest.raises(ValueError, match="model.init='scratch'"):
        build_model(*cfgs("convnext_atto", "dsc", init="scratch"))


# ---------------------------------------------------------------- model table


def test_model_table_counts_match_timm_and_the_head_arithmetic():
    import timm

    from dcls_audio.models.table import measure, to_markdown

    rows = {r["conv"]: r for r in measure(["convnext_atto"], ["dsc", "dcls_gauss"])}
    dims, depths = (40, 80, 160, 320), (2, 2, 6, 2)
    # the audio stem (2x16 per output channel) has 16 more weights per channel than timm's 4x4
    for classes in (527, 1000):
        ref = timm.create_model("convnext_atto", num_classes=classes, in_chans=1)
        expected = sum(p.numel() for p in ref.parameters()) + 16 * dims[0]
        assert rows["dsc"][f"params_{classes}"] == expected
    assert rows["dsc"]["head_difference"] == 473 * (ref.num_features + 1)
    assert rows["dsc"]["swapped"] == 0 and rows["dsc"]["position_params"] == 0
    # 12 depthwise 7x7 layers: 49 -> 26 weights per channel; P and SIG: 2 x 2 x 26 per stage
    dcls = rows["dcls_gauss"]
    assert dcls["swapped"] == dcls["dcls_layers"] == sum(depths)
    assert dcls["position_params"] == sum(4 * 26 * c for c in dims)
    weights = sum(n * c * (26 - 49) for n, c in zip(depths, dims, strict=True))
    assert dcls["params_527"] == rows["dsc"]["params_527"] + weights + dcls["position_params"]
    table = to_markdown(list(rows.values()))
    assert f"| ConvNeXt-atto | dsc | 0 | {rows['dsc']['params_527'] / 1e6:.3f}M |" in table

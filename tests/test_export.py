"""dcls-audio-export: plain-conv ONNX / TorchScript models equal PyTorch's under onnxruntime."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import cfgs
from reference_models import authors_file, reference_model
from torch import nn

from dcls_audio import export
from dcls_audio.data import LogMelFrontend
from dcls_audio.dcls import DclsNd
from dcls_audio.models import build_model

logging.getLogger().setLevel(logging.ERROR)


def own_checkpoint(path, model: str, conv: str, **over) -> nn.Module:
    """A dcls-audio checkpoint with non-trivial layer scales (so every block matters)."""
    m, c = cfgs(model, conv, 527, drop_path_rate=0.0)
    c.update(over)
    torch.manual_seed(0)
    net = build_model(m, c)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("gamma", "layer_scale.gamma", "layer_scale_1.gamma")):
                p.fill_(0.3)
    torch.save({"model": net.state_dict(), "config": {"model": m, "conv": c}}, path)
    return net.eval()


def test_dcls_convnext_onnx_equals_pytorch(tmp_path):
    ckpt = tmp_path / "last.pt"
    net = own_checkpoint(ckpt, "convnext_atto", "dcls_gauss")
    onnx_path, ts_path = tmp_path / "m.onnx", tmp_path / "m.ts"
    out = export.export(str(ckpt), str(onnx_path), str(ts_path), repeats=1)
    assert out["onnx_rel_err"] <= 1e-4 and out["torchscript_rel_err"] <= 1e-4
    graph = onnx.load(str(onnx_path)).graph
    assert {n.op_type for n in graph.node} >= {"Conv"}
    # independent check: a fresh session on a new input against the PyTorch DCLS model
    x = LogMelFrontend().eval()(export.test_signal().unsqueeze(0) * 0.5)
    x = torch.cat([x, x.flip(-1)])  # batch 2, another clip
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"logmel": x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_deployed_model_has_no_dcls_layers_and_crops_kernels(tmp_path):
    net = own_checkpoint(tmp_path / "c.pt", "convnext_atto", "dcls_gauss")
    deployed = export.deploy_model(net)
    assert not any(isinstance(m, DclsNd) for m in deployed.modules())
    # last stage: 8x7 maps, 23x23 kernel, padding 11 -> taps within 7 (rows) / 6 (cols) of centre
    assert deployed.stages[3].blocks[0].conv_dw.kernel_size == (15, 13)
    assert deployed.stages[0].blocks[0].conv_dw.kernel_size == (23, 23)


@pytest.mark.slow
def test_reparameterised_fastvit_onnx_equals_pytorch(tmp_path):
    """FastViT-SA24 DCLS (RepCPE and ConvFFN DCLS) re-parameterised, exported, checked."""
    ref = reference_model("fastvit_sa24", True, count=5)  # 23x23, 5 elements: faster
    ckpt = tmp_path / "fastvit_dcls_audio_sa24.pth"
    authors_file(ckpt, "fastvit_sa24", ref, "fastvit_dcls_audio_sa24")
    out = export.export(str(ckpt), str(tmp_path / "f.onnx"), conv=None, repeats=1)
    assert out["onnx_rel_err"] <= 1e-4
    from timm.models.fastvit import MobileOneBlock, RepConditionalPosEnc

    from dcls_audio.models.checkpoint import load_model

    deployed = export.deploy_model(load_model(ckpt).model)
    assert not any(isinstance(m, DclsNd) for m in deployed.modules())
    fused = [m for m in deployed.modules() if isinstance(m, (MobileOneBlock, RepConditionalPosEnc))]
    assert fused and all(getattr(m, "reparam_conv", None) is not None for m in fused)


def test_waveform_frontend_exports(tmp_path):
    ckpt = tmp_path / "c.pt"
    own_checkpoint(ckpt, "convnext_atto", "dsc")
    out = export.export(str(ckpt), str(tmp_path / "w.onnx"), waveform=True, repeats=1)
    assert out["input"].startswith("waveform") and out["onnx_rel_err"] <= 1e-4


@pytest.mark.parametrize(("stage", "upsample", "frames"), [(-1, 4, 28), (-2, 2, 30)])
def test_frames_export_of_a_frame_head_checkpoint(tmp_path, stage, upsample, frames):
    """--frames of a strongly trained checkpoint exports its frame head (not the clip head)."""
    from dcls_audio.models.frames import frame_logits

    m, c = cfgs("convnext_atto", "dcls_gauss", 527, drop_path_rate=0.0, frame_head=upsample,
                frame_stage=stage)  # fmt: skip
    torch.manual_seed(0)
    net = build_model(m, c).eval()
    ckpt = tmp_path / "strong.pt"
    torch.save({"model": net.state_dict(), "config": {"model": m, "conv": c}}, ckpt)
    onnx_path = tmp_path / "frames.onnx"
    assert export.main([str(ckpt), "--onnx", str(onnx_path), "--frames"]) == 0
    x = LogMelFrontend().eval()(export.test_signal().unsqueeze(0) * 0.5)
    got = ort.InferenceSession(str(onnx_path)).run(None, {"logmel": x.numpy()})[0]
    with torch.no_grad():
        want = net.frame_head(net.forward_intermediates(x, indices=[4 + stage])[1][0])
    assert got.shape == (1, frames, 527)  # 10 s: 7 columns x 4, or 15 stage-3 columns x 2
    assert np.abs(got - want.numpy()).max() <= 1e-4 * want.abs().max().item()
    with torch.no_grad():  # the head's frames, not the columns through the clip head
        torch.testing.assert_close(frame_logits(net, x), want)


def test_export_cli_errors(tmp_path, capsys):
    assert export.main([str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "none.pt: no such file" in capsys.readouterr().err
    ckpt = tmp_path / "c.pt"
    own_checkpoint(ckpt, "convnext_atto", "dsc")
    assert export.main([str(ckpt)]) == 2
    assert "nothing to export" in capsys.readouterr().err

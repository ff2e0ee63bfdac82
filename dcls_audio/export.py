"""Export a checkpoint as a plain-convolution ONNX / TorchScript model, verified against PyTorch.

Usage::

    dcls-audio-export CKPT --onnx model.onnx [--torchscript model.pt] [--waveform] [--frames]

In eval mode a DCLS kernel is a constant dense kernel: every DCLS layer becomes an ``nn.Conv2d``
holding its constructed kernel, cropped exactly as the eval path crops it for the feature-map
size of one clip (taps that can only meet zero padding are dropped, so a 23x23 kernel on an
8x7 map becomes at most 15x13), and FastViT is re-parameterised for inference
(:func:`dcls_audio.models.reparameterize`). The exported graph has a fixed clip length, the
checkpoint's ``data.clip_seconds`` as tagging and evaluation read it (10 s, 1001 frames, for
AudioSet runs and for files without it), and a dynamic batch size; it needs neither this package
nor DCLS code.

``--waveform`` includes the log-mel frontend, so the model maps (N, samples) waveforms at 32 kHz
to logits. ``torch.stft`` does not export to ONNX here (complex tensors), so the exported
frontend computes the STFT as a strided convolution with a Hann-windowed DFT basis (the same
numbers up to float rounding). Without it the model maps (N, 1, 128, frames) log-mel to logits.
``--frames`` exports the frame-level model of ``dcls-audio-tag --timeline``
(:func:`dcls_audio.timeline.frame_logits`): logits (N, T, classes), one row per column of the
last feature map (1.28 s each), instead of (N, classes); windowing and averaging stay outside.

Both files are checked against the PyTorch model (DCLS layers, torch.stft frontend) on the
log-mel of a test signal (or the first clip of ``--audio FILE``): the largest error relative to
the largest logit must be <= 1e-4. onnxruntime and PyTorch CPU times are measured side by side.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcls_audio.dcls.layers import _plan_axis
from dcls_audio.models.foreign import FORMATS

CLIP_SAMPLES = 320000
INPUT_SHAPE = (1, 128, 1001)
TOLERANCE = 1e-4
HOP = 320  # log-mel hop in samples


def clip_samples(config: dict[str, Any]) -> int:
    """Samples of one clip at 32 kHz: the run's ``data.clip_seconds`` (10 s when absent)."""
    seconds = float((config.get("data") or {}).get("clip_seconds", CLIP_SAMPLES / 32000))
    return round(seconds * 32000)


class ExportLogMel(nn.Module):
    """The eval-mode log-mel frontend with the STFT as a conv1d over a windowed DFT basis."""

    def __init__(self, frontend: nn.Module) -> None:
        super().__init__()
        n_fft, self.hop = int(frontend.n_fft), int(frontend.hop_length)
        bins = n_fft // 2 + 1
        window = torch.hann_window(n_fft, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(torch.arange(bins), torch.arange(n_fft)) / n_fft
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
        self.register_buffer("basis", basis.float().unsqueeze(1))  # (2 * bins, 1, n_fft)
        self.register_buffer("fb", frontend.mel.fb.detach().clone().float())  # (bins, mels)
        self.bins, self.pad = bins, n_fft // 2
        self.mean, self.std = float(frontend.mean), float(frontend.std)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(N, T) waveforms -> (N, 1, mels, frames) normalised log-mel."""
        x = F.pad(wave.unsqueeze(1), (self.pad, self.pad), mode="reflect")
        y = F.conv1d(x, self.basis, stride=self.hop)
        power = y[:, : self.bins] ** 2 + y[:, self.bins :] ** 2
        mel = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        return ((db - self.mean) / self.std).unsqueeze(1)


class FrameModel(nn.Module):
    """The frame-level model: log-mel -> logits (N, T, classes) of each feature-map column."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-column logits, as :func:`dcls_audio.timeline.frame_logits` computes them."""
        from dcls_audio.timeline import frame_logits

        return frame_logits(self.model, x)


class WaveformModel(nn.Module):
    """Frontend then model: (N, samples) waveforms -> logits."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of waveforms."""
        return self.model(self.frontend(wave))


def _crop_conv(conv: nn.Conv2d, spatial: Sequence[int]) -> nn.Module:
    """``conv`` with the taps that only ever meet zero padding (for this input size) removed."""
    k, pad, stride = conv.kernel_size, conv.padding, conv.stride
    plans = [_plan_axis(n, k[d], pad[d], pad[d], stride[d]) for d, n in enumerate(spatial)]
    if all(p is None for p in plans):
        return conv
    window = [p[0] if p else (0, k[d]) for d, p in enumerate(plans)]
    pads = [p[1] if p else (pad[d], pad[d]) for d, p in enumerate(plans)]
    weight = conv.weight[:, :, window[0][0] : window[0][1], window[1][0] : window[1][1]]
    symmetric = all(lo == hi for lo, hi in pads)
    out = nn.Conv2d(
        conv.in_channels, conv.out_channels, tuple(weight.shape[2:]), stride=stride,
        padding=tuple(lo for lo, _ in pads) if symmetric else 0, groups=conv.groups,
        bias=conv.bias is not None,
    )  # fmt: skip
    with torch.no_grad():
        out.weight.copy_(weight)
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    if symmetric:
        return out
    return nn.Sequential(nn.ZeroPad2d((pads[1][0], pads[1][1], pads[0][0], pads[0][1])), out)


@torch.no_grad()
def deploy_model(model: nn.Module, input_shape: Sequence[int] = INPUT_SHAPE) -> nn.Module:
    """A copy of ``model`` with plain convs only: DCLS baked and cropped, FastViT fused."""
    from dcls_audio.models import reparameterize

    net = reparameterize(model.eval(), dense=True).eval()
    large = {
        name: m
        for name, m in net.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.padding_mode == "zeros"
        and isinstance(m.padding, tuple)
        and max(m.kernel_size) > 7
    }
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            sizes.setdefault(name, tuple(args[0].shape[-2:]))

        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in large.items()]
    try:
        net(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    for name, conv in large.items():
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, _crop_conv(conv, sizes[name]))
    return net


def test_signal(seconds: float = 10.0, rate: int = 32000) -> torch.Tensor:
    """A deterministic test clip (10 s by default): chirp, harmonic tone, clicks, quiet noise."""
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    chirp = 0.3 * torch.sin(2 * math.pi * (200 * t + 400 * t**2))
    tone = sum(0.1 / h * torch.sin(2 * math.pi * 440 * h * t) for h in range(1, 6))
    clicks = 0.5 * (torch.remainder(t, 0.25) < 0.002).double()
    noise = 0.02 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    return (chirp + tone + clicks + noise).float()


@torch.no_grad()
def _median_time(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def export(
    checkpoint: str,
    onnx_path: str | None = None,
    torchscript_path: str | None = None,
    *,
    waveform: bool = False,
    frames: bool = False,
    model: str | None = None,
    conv: str | None = None,
    fmt: str = "auto",
    prefer_ema: bool = True,
    audio: str | None = None,
    batch_size: int = 2,
    opset: int = 17,
    repeats: int = 5,
) -> dict[str, Any]:
    """Export and verify; returns errors and timings. Raises if an error exceeds 1e-4."""
    from dcls_audio.data import LogMelFrontend
    from dcls_audio.models.checkpoint import load_model

    if not onnx_path and not torchscript_path:
        raise ValueError("nothing to export: give --onnx PATH and/or --torchscript PATH")
    loaded = load_model(checkpoint, prefer_ema=prefer_ema, model=model, conv=conv, fmt=fmt)
    frontend = LogMelFrontend().eval()
    samples = clip_samples(loaded.config)
    if audio:
        from dcls_audio.tag import read_audio, split_windows

        wave = split_windows(read_audio(audio)[0], samples)[:1]
    else:
        wave = test_signal(samples / 32000).unsqueeze(0)
    wave = wave.repeat(batch_size, 1)
    wave[1:] *= torch.linspace(1.0, 0.25, batch_size)[1:, None]  # distinct clips
    with torch.no_grad():
        logmel = frontend(wave)
        reference = FrameModel(loaded.model)(logmel) if frames else loaded.model(logmel)
    net = deploy_model(loaded.model, (1, logmel.shape[2], samples // HOP + 1))
    if frames:
        net = FrameModel(net).eval()
    if waveform:
        net = WaveformModel(ExportLogMel(frontend), net).eval()
    example = wave if waveform else logmel
    name = "waveform" if waveform else "logmel"
    with torch.no_grad():
        deployed_err = _rel_err(net(example), reference)
        deployed_time = _median_time(lambda: net(example), repeats)
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "model": loaded.config["model"]["name"],
        "conv": loaded.config["conv"]["name"],
        "input": f"{name} {tuple(example.shape[1:])}, dynamic batch",
        "output": f"logits {tuple(reference.shape[1:])}" + (" per frame" if frames else ""),
        "clip_seconds": samples / 32000,
        "deployed_torch_rel_err": deployed_err,
        "torch_s_per_batch": _median_time(
            lambda: (FrameModel(loaded.model) if frames else loaded.model)(logmel), repeats
        ),
        "deployed_torch_s_per_batch": deployed_time,
    }
    if onnx_path:
        import onnxruntime as ort

        def write_onnx(tmp: str) -> None:
            torch.onnx.export(
                net, (example,), tmp, dynamo=False, opset_version=opset, input_names=[name],
                output_names=["logits"], dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip

        with torch.no_grad():
            _atomic(onnx_path, write_onnx)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        feed = {name: example.numpy()}
        got = torch.from_numpy(session.run(None, feed)[0])
        out["onnx"] = str(onnx_path)
        out["onnx_rel_err"] = _rel_err(got, reference)
        out["onnxruntime_s_per_batch"] = _median_time(lambda: session.run(None, feed), repeats)
    if torchscript_path:
        with torch.no_grad():
            traced = torch.jit.trace(net, (example,))
        _atomic(torchscript_path, lambda tmp: torch.jit.save(traced, tmp))
        scripted = torch.jit.load(str(torchscript_path))
        with torch.no_grad():
            out["torchscript"] = str(torchscript_path)
            out["torchscript_rel_err"] = _rel_err(scripted(example), reference)
    worst = max(v for k, v in out.items() if k.endswith("rel_err"))
    if worst > TOLERANCE:
        raise RuntimeError(f"exported model differs from PyTorch: {out} (tolerance {TOLERANCE})")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="dcls-audio-export",
        description="Export a checkpoint as plain-conv ONNX/TorchScript, verified and timed.",
    )
    p.add_argument("checkpoint", help="a run's best.pt/last.pt or a foreign checkpoint")
    p.add_argument("--onnx", help="write the ONNX model here")
    p.add_argument("--torchscript", help="write the TorchScript model here")
    p.add_argument("--waveform", action="store_true", help="include the log-mel frontend")
    p.add_argument("--frames", action="store_true", help="per-frame logits (the timeline model)")
    p.add_argument("--model", help="zoo model of a foreign file (default: read from the file)")
    p.add_argument("--conv", help="conv config of a foreign file (default: read from the file)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="layout of the file")
    p.add_argument("--raw-weights", action="store_true", help="ignore EMA weights in the file")
    p.add_argument("--audio", help="verify on the first clip of this file (default: test signal)")
    p.add_argument("--batch-size", type=int, default=2, help="verification batch (default 2)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    args = p.parse_args(argv)
    try:
        out = export(
            args.checkpoint, args.onnx, args.torchscript, waveform=args.waveform,
            frames=args.frames, model=args.model, conv=args.conv, fmt=args.format,
            prefer_ema=not args.raw_weights,
            audio=args.audio, batch_size=args.batch_size, opset=args.opset,
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key, value in out.items():
        print(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

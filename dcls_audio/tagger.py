"""Scoring waveforms with a checkpoint: the `Tagger`, reading audio, windows of the clip length.

The library part of tagging that `dcls_audio.tag` (clip-level tags) and `dcls_audio.timeline`
(frame-level tracks) share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import nn

from dcls_audio.data.stream import AudioReadError

SAMPLE_RATE = 32000
WINDOW_SECONDS = 10.0
WINDOW_SAMPLES = 320000


@dataclass
class Tagger:
    """A model in eval mode with its frontend and class names, ready to score waveforms."""

    model: nn.Module
    frontend: nn.Module
    class_names: list[str]
    device: torch.device
    weights: str  # "ema" or "model": which state dict of the checkpoint is loaded
    window_samples: int = WINDOW_SAMPLES  # the training clip length (data.clip_seconds)
    activation: str = "sigmoid"  # "softmax" for a data.task=multiclass model

    @torch.inference_mode()
    def probabilities(self, windows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Sigmoid (multiclass: softmax) probabilities (W, C) of windows (W, samples) at 32 kHz."""
        out = []
        for start in range(0, windows.shape[0], batch_size):
            chunk = windows[start : start + batch_size].to(self.device)
            logits = self.model(self.frontend(chunk)).float()
            probs = logits.softmax(1) if self.activation == "softmax" else logits.sigmoid()
            out.append(probs.cpu())
        return torch.cat(out)


def load_tagger(
    checkpoint: str | Path,
    device: str = "cpu",
    prefer_ema: bool = True,
    channels_last: str = "auto",
    compile: str = "none",
) -> Tagger:
    """Build a ready-to-use Tagger from a checkpoint file (layout and compile as the trainer's)."""
    from dcls_audio.data import LogMelFrontend
    from dcls_audio.models.checkpoint import load_model
    from dcls_audio.train.accel import prepare_inference

    loaded = load_model(checkpoint, prefer_ema=prefer_ema, device=device)
    dev = torch.device(device)
    net = prepare_inference(loaded.model, dev, channels_last, compile)
    frontend = LogMelFrontend().to(dev).eval()
    # the run's clip length and task; files without them (older runs, foreign files): 10 s tags
    data = loaded.config.get("data") or {}
    window = round(float(data.get("clip_seconds", WINDOW_SECONDS)) * SAMPLE_RATE)
    activation = "softmax" if data.get("task") == "multiclass" else "sigmoid"
    return Tagger(net, frontend, loaded.class_names, dev, loaded.weights, window, activation)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a file as float32 mono at 32 kHz; AudioReadError naming the file on any failure."""
    path = Path(path)
    if not path.is_file():  # soundfile would only say "System error."
        raise AudioReadError(
            f"{path}: no such file" if not path.exists() else f"{path}: not a file"
        )
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError, OSError, TypeError, ...
        raise AudioReadError(f"{path}: cannot read audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioReadError(f"{path}: contains no audio samples")
    if not np.all(np.isfinite(data)):
        raise AudioReadError(f"{path}: contains non-finite samples (NaN or inf)")
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        wave = torch.from_numpy(np.ascontiguousarray(mono))
        mono = torchaudio.functional.resample(wave, int(rate), SAMPLE_RATE).numpy()
    return mono.astype(np.float32, copy=False), int(rate)


def split_windows(wave: np.ndarray, window: int = WINDOW_SAMPLES) -> torch.Tensor:
    """Cut a 32 kHz waveform into windows (10 s; hop = window), zero-padding the last one."""
    n = max(1, math.ceil(len(wave) / window))
    padded = np.zeros(n * window, dtype=np.float32)
    padded[: len(wave)] = wave
    return torch.from_numpy(padded).view(n, window)

"""A frame-level head on a zoo model's pre-pooling time axis, for training from strong labels.

The last feature map of every zoo model is (N, C, F, T): F frequency rows and T time columns,
each column covering `feature_stride` log-mel frames (128 = 1.28 s for the three paper models,
their time axis downsampled by 16 in the stem and 8 in the stages). ConvNeXt crops its input at
the end (a 10-s clip gives 7 columns, 8.96 s); ConvFormer and FastViT pad it (8 columns,
10.24 s). 1.28 s is coarser than the 1-s segments events are scored on, so the head upsamples
the time axis ``upsample`` times (linear interpolation of the features) before its classifier:
frame k covers ``[k, k + 1) * stride / upsample`` log-mel frames. ``stage`` picks the feature map
the head reads: -1 the last, -2 the stage before it (half the stride: 0.64-s columns, read with
timm's ``forward_intermediates``). timm has no such head (its heads pool first); this one is
LayerNorm + Linear per frame, as ConvNeXt's own head per clip.

`add_frame_head` attaches it as ``model.frame_head`` (its weights are saved with the model's)
and makes ``model(x)`` return ``(clip logits, frame logits (N, T * upsample, classes))`` while
``model.frame_head.emit`` is true (training); false, ``model(x)`` is the clip logits as before.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

STFT_HOP_S = 320 / 32000  # seconds per log-mel frame


class FrameHead(nn.Module):
    """Frame logits from a (N, C, F, T) feature map: frequency mean, time upsampling, norm, fc."""

    def __init__(self, in_chs: int, num_classes: int, upsample: int = 1, stage: int = -1) -> None:
        super().__init__()
        if isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 1:
            raise ValueError(f"model.frame_head={upsample!r}: expected null or an integer >= 1")
        self.upsample, self.stage = upsample, stage
        self.norm = nn.LayerNorm(in_chs)
        self.fc = nn.Linear(in_chs, num_classes)
        self.emit = False  # model(x) returns (clip, frames) while true

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, C, F, T) features -> (N, T * upsample, classes) logits."""
        x = feats.mean(2)  # (N, C, T)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="linear", align_corners=False)
        return self.fc(self.norm(x.transpose(1, 2)))

    def extra_repr(self) -> str:
        """The time upsampling, in the module's repr."""
        return f"upsample={self.upsample}, stage={self.stage}"


def head_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the last feature map, the map the frame head reads): one pass through the stages."""
    stage = model.frame_head.stage
    if stage == -1:
        feats = model.forward_features(x)
        return feats, feats
    feats, inter = model.forward_intermediates(x, indices=[len(model.stages) + stage])
    return feats, inter[0]


def _forward_with_frames(self: nn.Module, x: torch.Tensor):
    """timm's forward (features, then the clip head), plus the frame head while it emits."""
    if not self.frame_head.emit:
        return self.forward_head(self.forward_features(x))
    feats, head_in = head_features(self, x)
    return self.forward_head(feats), self.frame_head(head_in)


def add_frame_head(model: nn.Module, upsample: int, stage: int = -1) -> nn.Module:
    """Attach a `FrameHead` reading stage ``stage`` (-1: the last) of a timm model."""
    stages = len(model.stages)
    if isinstance(stage, bool) or not isinstance(stage, int) or not -stages <= stage <= -1:
        raise ValueError(
            f"model.frame_stage={stage!r}: expected -1 (the last stage's map) down to -{stages}"
        )
    in_chs = int(model.num_features if stage == -1 else model.feature_info[stage]["num_chs"])
    model.frame_head = FrameHead(in_chs, int(model.num_classes), upsample, stage)
    model.forward = types.MethodType(_forward_with_frames, model)
    return model


def frame_logits(model: nn.Module, logmel: torch.Tensor) -> torch.Tensor:
    """Frame logits (N, T, classes): the model's frame head when it has one (strong labels),
    else each column of the last feature map (averaged over frequency) through the clip head."""
    if has_frame_head(model):
        return model.frame_head(head_features(model, logmel)[1])
    feats = model.forward_features(logmel)  # (N, C, F, T)
    n, c, _, t = feats.shape
    cols = feats.mean(2).permute(0, 2, 1).reshape(n * t, c, 1, 1)
    return model.forward_head(cols).reshape(n, t, -1)


def has_frame_head(model: nn.Module) -> bool:
    """True when ``model`` (not a wrapper) carries a `FrameHead`."""
    return isinstance(getattr(model, "frame_head", None), FrameHead)


def _stride(width: Callable[[torch.Tensor], int], model: nn.Module, n_mels: int) -> int:
    """Log-mel frames per column of the map whose width ``width`` reads from a log-mel input."""
    device = next(model.parameters()).device
    in_chans = int(getattr(model, "in_chans", 1) or 1)
    widths = []
    with torch.inference_mode():
        for frames in (1024, 2048):
            widths.append(width(torch.zeros(1, in_chans, n_mels, frames, device=device)))
    if widths[1] <= widths[0]:
        raise ValueError(f"feature map width does not grow with the input ({widths})")
    return round(1024 / (widths[1] - widths[0]))


def feature_stride(model: nn.Module, n_mels: int = 128) -> int:
    """Log-mel frames per column of the model's last feature map (128 for the zoo's models)."""
    return _stride(lambda x: model.forward_features(x).shape[-1], model, n_mels)


def frame_stride(model: nn.Module, n_mels: int = 128) -> float:
    """Log-mel frames per frame of `frame_logits` (the frame head's, or a feature column's)."""
    if not has_frame_head(model):
        return float(feature_stride(model, n_mels))
    stride = _stride(lambda x: head_features(model, x)[1].shape[-1], model, n_mels)
    return stride / model.frame_head.upsample


def frame_seconds(model: nn.Module) -> float:
    """Seconds of audio per frame of `frame_logits` (the frame head's, or a feature column's)."""
    return frame_stride(model) * STFT_HOP_S

"""Training from strong labels: the frame loss, and frame scores for the event metrics.

``frames=strong`` gives the model a frame head (`dcls_audio.models.frames`) and adds
``frames.weight`` x the frame loss to the clip loss. The loader yields each clip's events moved
by its augmentation; here they become frame targets at the head's frame rate (frame k covers
``[k, k + 1) * frame_s`` seconds of the clip, the span of the model's columns, which may end
before the clip (ConvNeXt crops) or after it (padding)), mixed with the clip labels' pairs and
weight, and the loss is the binary cross-entropy over the frames of the strongly labelled clips
(a mixed clip is strong only when both of its clips are) and the classes their vocabulary labels.
Weak-only clips contribute the clip loss only; the head still runs on every batch (a zero frame
loss keeps its weights in the graph, so DDP never meets an unused parameter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcls_audio.models.frames import FrameHead, frame_seconds, has_frame_head


@dataclass
class FrameLoss:
    """The frame term of the loss: its weight, the head's frame length, the class mask."""

    weight: float
    frame_s: float  # seconds per output frame
    class_mask: torch.Tensor  # (C,) bool: classes the strong vocabulary labels

    def targets(self, events: torch.Tensor, num_frames: int, num_classes: int) -> torch.Tensor:
        """(N, num_frames, C) frame targets of the padded events (N, E, 3)."""
        from dcls_audio.data.strong import frame_targets

        return frame_targets(events, num_frames, num_frames * self.frame_s, num_classes)

    def __call__(
        self, frame_logits: torch.Tensor, events: torch.Tensor, strong: torch.Tensor, mixup: Any
    ) -> torch.Tensor:
        """Masked mean BCE of (N, F, C) logits against the events' targets, mixed as the labels."""
        n, num_frames, num_classes = frame_logits.shape
        target = self.targets(events.to(frame_logits.device), num_frames, num_classes)
        target, strong = mixup.mix_frames(target, strong.to(frame_logits.device))
        mask = strong.view(n, 1, 1) & self.class_mask.view(1, 1, -1)
        bce = F.binary_cross_entropy_with_logits(frame_logits, target, reduction="none")
        mask = mask.expand_as(bce).float()
        return (bce * mask).sum() / mask.sum().clamp_min(1.0)


def build_frame_loss(
    frames_cfg: Any, model: nn.Module, train_dataset: Any, device: torch.device, files: list[str]
) -> FrameLoss | None:
    """The run's `FrameLoss` (None without a frame head); errors name the keys to change."""
    tune = frames_cfg.get("tune_clips", 0)  # used at the end of the run: checked before it
    if isinstance(tune, bool) or not isinstance(tune, int) or tune < 0:
        raise ValueError(f"frames.tune_clips={tune!r}: expected an integer >= 0 (0: off)")
    weight = float(frames_cfg.weight)
    head = has_frame_head(model)
    if not head and weight == 0.0:
        return None
    if not head:
        raise ValueError(
            f"frames.weight={weight} needs a frame head: train with frames=strong (or set "
            "model.frame_head=K, the time upsampling of the head)"
        )
    if weight <= 0.0:
        raise ValueError(
            "model.frame_head is set but frames.weight=0: the head would train on nothing; use "
            "frames=strong (weight 1.0) or set frames.weight > 0, or model.frame_head=null"
        )
    if not getattr(train_dataset, "has_strong", False):
        raise ValueError(
            f"frames=strong needs strong labels in data.train_files, and {files} have none: "
            "pack them with `dcls-audio-pack custom --events FILE.tsv` or `dcls-audio-pack "
            "audioset --strong FILE.tsv` (docs/strong_labels.md)"
        )
    mask = torch.as_tensor(np.asarray(train_dataset.strong_classes, dtype=bool), device=device)
    return FrameLoss(weight=weight, frame_s=frame_seconds(model), class_mask=mask)


def emit_frames(model: nn.Module, on: bool) -> None:
    """Make ``model(x)`` return (clip, frame) logits (``on``) or the clip logits alone."""
    head = getattr(model, "frame_head", None)
    if isinstance(head, FrameHead):
        head.emit = bool(on)


def clip_frames(frame_probs: np.ndarray, frame_s: float, clip_seconds: float, rate: int = 10):
    """Frame scores (N, F, C) over ``[0, F * frame_s)`` resampled to ``rate`` frames/s of the clip.

    Each output frame takes the score of the model frame covering its centre; past the head's
    span (ConvNeXt ends 1.04 s before a 10-s clip) the last frame's score is repeated.
    """
    n_out = int(round(clip_seconds * rate))
    centres = (np.arange(n_out) + 0.5) / rate
    src = np.minimum((centres / frame_s).astype(np.int64), frame_probs.shape[1] - 1)
    return frame_probs[:, src]


def segment_scores(
    model: nn.Module,
    frontend: nn.Module,
    loader: Any,
    device: torch.device,
    clip_seconds: float,
    main: bool,
    amp: bool = False,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(segment scores (N, segments, C), padded events (N, E, 3)) of the strongly labelled clips
    of ``loader``, gathered on the main rank (None on the others; N may be 0).

    The frames are the frame head's (``frames=strong``), else the clip head applied to each
    column of the last feature map (the timeline's ``frames`` mode: what a weakly trained model
    knows of "when"). Every rank scores its shard and takes part in the gather. Scores are
    reduced to 1-s segments batch by batch (the max over the frames overlapping each), so memory
    holds (clips, segments, classes).
    """
    from dcls_audio.models.frames import frame_logits
    from dcls_audio.train.distributed import all_gather_object
    from dcls_audio.train.event_metrics import segment_max
    from dcls_audio.train.preempt import batches

    segments, rows = [], []
    model.eval()
    frontend.eval()
    frame_s = frame_seconds(model)
    with torch.inference_mode(), batches(loader) as it:
        for waveform, _, events, strong in it:
            keep = strong.bool()
            if not bool(keep.any()):
                continue
            x = frontend(waveform[keep].to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                frames = frame_logits(model, x)
            probs = frames.float().sigmoid().cpu().numpy()
            dense = clip_frames(probs, frame_s, clip_seconds)
            segments.append(segment_max(dense, clip_seconds).astype(np.float32))
            rows.append(events[keep].numpy())
    gathered = all_gather_object((segments, rows))
    if not main:
        return None
    segments = [s for part, _ in gathered for s in part]
    rows = [r for _, part in gathered for r in part]
    if not segments:
        return np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 3), np.float32)
    return np.concatenate(segments), np.concatenate(rows)


def tuned_threshold(scored: tuple[np.ndarray, np.ndarray] | None, class_mask: np.ndarray,
                    clip_seconds: float) -> dict[str, Any] | None:  # fmt: skip
    """The segment-F1 threshold chosen on `segment_scores` of training clips (None: nothing to
    choose from): ``segment_threshold_tuned``, its training F1 and the clips it saw."""
    from dcls_audio.train.event_metrics import best_threshold, reference_segments

    if scored is None or len(scored[0]) == 0:
        return None
    scores, events = scored
    mask = np.asarray(class_mask, dtype=bool)
    reference = reference_segments(events, len(scores), scores.shape[2], clip_seconds)
    threshold, f1 = best_threshold(scores[:, :, mask], reference[:, :, mask])
    if not np.isfinite(threshold):  # no active segment in the training clips
        return None
    return {"segment_threshold_tuned": threshold, "segment_f1_train": f1,
            "tune_clips": int(len(scores))}  # fmt: skip


def event_scores(
    model: nn.Module,
    frontend: nn.Module,
    loader: Any,
    device: torch.device,
    class_mask: np.ndarray,
    clip_seconds: float,
    main: bool,
    amp: bool = False,
    tuned: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Event metrics of the model's frames over the strongly labelled clips of ``loader``.

    Every rank takes part (`segment_scores`); the main rank gets
    `dcls_audio.train.event_metrics.event_metrics` (segment F1 at 0.5 and segment AP over 1-s
    segments), plus ``segment_f1_tuned`` at the threshold of ``tuned`` (`tuned_threshold`, chosen
    on training clips) and that choice's keys; the other ranks None.
    """
    from dcls_audio.train.event_metrics import event_metrics

    scored = segment_scores(model, frontend, loader, device, clip_seconds, main, amp)
    if scored is None:
        return None
    scores, events = scored
    if len(scores) == 0:  # no strongly labelled clip to score
        return {"event_clips": 0}
    strong = np.ones(len(scores), dtype=bool)
    out = event_metrics(scores, events, strong, clip_seconds, class_mask=class_mask)
    if tuned:
        at = event_metrics(scores, events, strong, clip_seconds, class_mask=class_mask,
                           threshold=tuned["segment_threshold_tuned"])  # fmt: skip
        out.update(tuned, segment_f1_tuned=at["segment_f1"])
    return out


def event_line(metrics: dict[str, Any]) -> str:
    """Console line of the event metrics."""
    if not metrics.get("event_clips"):
        return "events: no strongly labelled evaluation clip"
    tuned = ""
    if "segment_f1_tuned" in metrics:
        tuned = (
            f" ({metrics['segment_f1_tuned']:.4f} at {metrics['segment_threshold_tuned']:.3f}, "
            f"chosen on {metrics['tune_clips']} training clips)"
        )
    return (
        f"events ({metrics['event_clips']} strong clips, 1-s segments): segment F1 "
        f"{metrics['segment_f1']:.4f} at {metrics['segment_threshold']:g}{tuned}, segment AP "
        f"{metrics['segment_ap']:.4f}"
    )

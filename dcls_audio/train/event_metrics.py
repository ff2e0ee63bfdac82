"""Segment-based event metrics of frame scores against strong labels: F1 at a threshold, and AP.

Written here with numpy rather than imported: the reference implementations (sed_eval's
``SegmentBasedMetrics`` and sed_scores_eval's ``segment_based.average_precision``) are
development dependencies only: they pull dcase_util, librosa and pandas, and take a table per
clip and a Python loop per clip and segment (sed_scores_eval: 1.3 s for 200 10-s clips x 354
classes, 0.04 s here). The tests check these functions against both on the same inputs.

Definitions (as the reference implementations compute them):

- A clip of ``T`` s is cut into ``ceil(T / L)`` segments ``[k L, (k + 1) L)`` (``L =
  segment_s``; ``T / L`` rounded to 6 decimals first, so float noise in ``T`` adds no segment);
  the last one may reach past the clip's end. Segment and frame edges are rounded to 6 decimals
  (as sed_scores_eval does), so a frame that only touches a border stays out of the segment on
  the other side.
- Reference: a segment is active for a class if one of the clip's events of that class overlaps
  it for a positive time (sed_eval's ``floor(onset / L)`` to ``ceil(offset / L)``).
- Score of a segment and class: the largest score of the frames that overlap it.
- System output at a threshold: a segment is active where its score ``>= threshold`` (as
  :func:`dcls_audio.events.detect` decides frames: a frame active at ``>=`` marks every segment
  it overlaps).
- Segment F1: micro-averaged over all segments and classes, ``2 TP / (2 TP + FP + FN)``; equals
  sed_eval's overall F-measure wherever that is defined (sed_eval returns NaN when the system
  marks no segment at all; here that is an F1 of 0). Precision and recall are NaN where their
  denominator is 0, as in sed_eval; the error rate is sed_eval's ``(S + D + I) / N_ref`` with
  substitutions, deletions and insertions counted per segment over the classes.
- Segment AP: per class, the average precision of the segment scores against the segment
  activity over all scored clips: every distinct score is an operating point (tied segments
  enter together), and AP sums the precision at each point times the recall it adds, as
  sed_scores_eval and scikit-learn's ``average_precision_score`` compute it; then the mean over
  the classes that have at least one active segment (sed_scores_eval refuses classes without).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DECIMALS = 6  # time rounding of segment and frame edges (sed_scores_eval's time_decimals)
AP_CHUNK = 64  # classes sorted at a time (bounds the memory of the AP step)
EVENT_METRIC_KEYS = (
    "segment_f1",
    "segment_precision",
    "segment_recall",
    "segment_error_rate",
    "segment_ap",
    "segment_ap_classes",
)


def segment_edges(clip_seconds: float, segment_s: float) -> np.ndarray:
    """The ``ceil(T / L) + 1`` segment edges of a clip (s, rounded to 6 decimals)."""
    count = math.ceil(round(clip_seconds / segment_s, DECIMALS))  # 10 s + float noise: 10
    return np.round(np.arange(count + 1) * segment_s, DECIMALS)


def frame_ranges(frames: int, clip_seconds: float, segment_s: float) -> list[tuple[int, int]]:
    """[first, end) frames overlapping each segment, for frames spanning the clip uniformly."""
    edges = np.round(np.arange(frames + 1) * clip_seconds / frames, DECIMALS)
    seg = segment_edges(clip_seconds, segment_s)
    lo = np.searchsorted(edges[1:], seg[:-1], side="right")  # first frame ending after the start
    hi = np.searchsorted(edges[:-1], seg[1:], side="left")  # frames starting before the end
    return [(int(a), int(b)) for a, b in zip(lo, hi, strict=True)]


def segment_max(scores: np.ndarray, clip_seconds: float, segment_s: float = 1.0) -> np.ndarray:
    """(N, segments, C) scores of segments: the max over the frames of (N, F, C) that overlap each.

    A segment no frame overlaps (possible only through rounding) scores 0, as in sed_scores_eval.
    When ``clip_seconds`` is a multiple of ``segment_s``, passing this output to
    :func:`event_metrics` as (N, segments, C) frame scores gives the same metrics, so a caller
    can reduce batch by batch instead of holding every frame.
    """
    scores = np.asarray(scores)
    ranges = frame_ranges(scores.shape[1], clip_seconds, segment_s)
    out = np.zeros((scores.shape[0], len(ranges), scores.shape[2]), dtype=scores.dtype)
    for k, (a, b) in enumerate(ranges):
        if b > a:
            out[:, k] = scores[:, a:b].max(axis=1)
    return out


def _event_rows(events: Any, clips: int) -> tuple[np.ndarray, np.ndarray]:
    """(clip index, row) pairs and (M, 3) [onset, offset, class] rows of padded or listed events."""
    if not isinstance(events, (list, tuple)):
        events = np.asarray(events)  # a padded numpy array or CPU tensor
    if isinstance(events, np.ndarray) and events.dtype != object:
        if events.ndim != 3 or events.shape[0] != clips or events.shape[2] != 3:
            raise ValueError(
                f"events must be a ({clips}, E, 3) array of [onset_s, offset_s, class] rows, "
                f"got shape {events.shape}"
            )
        clip, row = np.divmod(np.arange(clips * events.shape[1]), max(events.shape[1], 1))
        return np.stack([clip, row], 1), events.reshape(-1, 3).astype(np.float64)
    if len(events) != clips:
        raise ValueError(f"events lists {len(events)} clips, scores {clips}")
    where, rows = [], []
    for n, clip_events in enumerate(events):
        arr = np.asarray(clip_events, dtype=np.float64).reshape(-1, 3)
        where.append(np.stack([np.full(len(arr), n), np.arange(len(arr))], 1))
        rows.append(arr)
    if not rows:
        return np.zeros((0, 2), dtype=np.int64), np.zeros((0, 3))
    return np.concatenate(where).astype(np.int64), np.concatenate(rows)


def reference_segments(
    events: Any, clips: int, classes: int, clip_seconds: float, segment_s: float = 1.0
) -> np.ndarray:
    """(N, segments, C) bool activity of the reference events (padding rows have class -1).

    Events are clipped to ``[0, clip_seconds]``; an event of zero length marks nothing. An event
    whose offset lies before its onset, a time that is not finite or a class outside
    ``[0, C)`` is an error naming its clip and row.
    """
    where, rows = _event_rows(events, clips)
    cls = rows[:, 2]
    keep = cls != -1
    where, rows, cls = where[keep], rows[keep], cls[keep]
    bad = ~np.isfinite(rows).all(1) | (rows[:, 1] < rows[:, 0])
    bad |= (cls < 0) | (cls >= classes) | (cls != np.round(cls))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"event {rows[i].tolist()} (clip {where[i, 0]}, row {where[i, 1]}): expected "
            f"[onset_s, offset_s, class] with onset <= offset and a class in [0, {classes}) "
            f"(-1 for padding); {int(bad.sum())} such row(s)"
        )
    onset = np.clip(rows[:, 0], 0.0, clip_seconds)
    offset = np.clip(rows[:, 1], 0.0, clip_seconds)
    seg = segment_edges(clip_seconds, segment_s)
    hit = (seg[None, :-1] < offset[:, None]) & (seg[None, 1:] > onset[:, None])  # (M, segments)
    out = np.zeros((clips, len(seg) - 1, classes), dtype=bool)
    m, k = np.nonzero(hit)
    out[where[m, 0], k, cls[m].astype(np.int64)] = True
    return out


def average_precision(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Per-class AP of (S, C) scores against (S, C) bool labels (NaN for a class with none)."""
    scores = np.asarray(scores)
    positives = np.asarray(positives, dtype=bool)
    samples, classes = scores.shape
    out = np.full(classes, np.nan)
    counts = positives.sum(0)
    steps = np.arange(1, samples + 1, dtype=np.float64)
    ends = np.arange(samples)
    for start in range(0, classes, AP_CHUNK):
        cols = np.arange(start, min(start + AP_CHUNK, classes))
        cols = cols[counts[cols] > 0]
        if len(cols) == 0 or samples == 0:
            continue
        x = np.ascontiguousarray(scores[:, cols].T)
        order = np.argsort(-x, axis=1)
        xs = np.take_along_axis(x, order, 1)
        ys = np.take_along_axis(positives[:, cols].T, order, 1)
        precision = np.cumsum(ys, axis=1) / steps  # at every prefix of the ranking
        # one operating point per distinct score: the precision at the end of its run of ties
        last = np.ones_like(ys)
        last[:, :-1] = xs[:, :-1] != xs[:, 1:]
        end = np.minimum.accumulate(np.where(last, ends, samples)[:, ::-1], axis=1)[:, ::-1]
        gained = ys * np.take_along_axis(precision, end, 1)
        out[cols] = gained.sum(1) / counts[cols]
    return out


def segment_counts(reference: np.ndarray, system: np.ndarray) -> dict[str, float]:
    """Micro F1, precision, recall and error rate of (..., segments, C) bool activities."""
    tp = int(np.count_nonzero(reference & system))
    fp = int(np.count_nonzero(system & ~reference))
    fn = int(np.count_nonzero(reference & ~system))
    n_ref = reference.sum(-1)
    n_sys = system.sum(-1)
    n_tp = (reference & system).sum(-1)
    errors = int((np.minimum(n_ref, n_sys) - n_tp + np.abs(n_ref - n_sys)).sum())  # S + D + I
    total = int(n_ref.sum())
    return {
        "segment_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
        "segment_precision": tp / (tp + fp) if tp + fp else math.nan,
        "segment_recall": tp / total if total else math.nan,
        "segment_error_rate": errors / total if total else math.nan,
    }


def best_threshold(scores: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """The threshold of largest micro F1 of scores against bool labels (any equal shapes), and
    that F1: every distinct score is an operating point (active at ``>=``, ties together), the
    threshold halfway between the best one and the next lower score. NaNs without a positive.

    Written here: scikit-learn's ``precision_recall_curve`` gives the same operating points but
    no threshold between them; this is its F1 maximum in one sort.
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positives, dtype=bool).ravel()
    if x.shape != y.shape:
        raise ValueError(f"scores and positives differ in size: {x.size} and {y.size}")
    total = int(y.sum())
    if total == 0:
        return math.nan, math.nan
    order = np.argsort(-x, kind="stable")
    xs, tp = x[order], np.cumsum(y[order])
    last = np.ones(len(xs), dtype=bool)  # the end of each run of tied scores
    last[:-1] = xs[:-1] != xs[1:]
    ends = np.flatnonzero(last)
    f1 = 2.0 * tp[ends] / (total + ends + 1)
    best = int(np.argmax(f1))
    end = ends[best]
    lower = xs[end + 1] if end + 1 < len(xs) else xs[end] - 1.0
    return float((xs[end] + lower) / 2.0), float(f1[best])


def event_metrics(
    scores: np.ndarray,
    events: np.ndarray | Sequence[Any],
    strong: np.ndarray,
    clip_seconds: float,
    class_mask: np.ndarray | None = None,
    threshold: float = 0.5,
    segment_s: float = 1.0,
) -> dict[str, Any]:
    """Segment-based F1 (at ``threshold``) and segment AP of the strongly labelled clips.

    Inputs:

    - ``scores``: float array (N clips, F frames, C classes) of frame probabilities in [0, 1];
      the F frames cover each clip uniformly (frame f spans ``[f T / F, (f + 1) T / F)`` s with
      ``T = clip_seconds``).
    - ``events``: the reference events of each clip, either the data loader's padded float array
      (N, E, 3) of ``[onset_s, offset_s, class]`` rows (class -1: padding) or a list of N
      sequences of such rows. Same-class events may overlap (their union counts).
    - ``strong``: bool (N,), the clips that have strong labels; only they are scored. A strong
      clip without events is all-negative; events of other clips are ignored.
    - ``class_mask``: bool (C,), the classes the strong vocabulary labels; the others are left
      out of every metric (None: all classes).

    CPU tensors are accepted in place of the arrays.

    Returns ``event_clips`` (clips scored), ``segment_threshold`` and ``segment_s`` (the
    settings), and, when at least one clip is scored, ``segment_f1``, ``segment_precision``,
    ``segment_recall``, ``segment_error_rate`` (micro over segments and classes, at the
    threshold), ``segment_ap`` (mean AP over the classes with an active segment; NaN if none)
    and ``segment_ap_classes`` (how many). With no strong clip the metric keys are absent.
    Definitions: the module docstring. Measured on one CPU core: 2000 clips x 100 frames x 527
    classes (10-s clips, 1-s segments) in about 0.9 s (tests/test_event_metrics.py).
    """
    scores = np.asarray(scores)
    if scores.ndim != 3 or 0 in scores.shape:
        raise ValueError(f"scores must be a non-empty (N, F, C) array, got shape {scores.shape}")
    clips, _, classes = scores.shape
    strong = np.asarray(strong, dtype=bool)
    if strong.shape != (clips,):
        raise ValueError(f"strong must be a bool ({clips},) array, got shape {strong.shape}")
    mask = np.ones(classes, bool) if class_mask is None else np.asarray(class_mask, dtype=bool)
    if mask.shape != (classes,):
        raise ValueError(f"class_mask must be a bool ({classes},) array, got shape {mask.shape}")
    if not (clip_seconds > 0 and segment_s > 0):
        raise ValueError(f"clip_seconds and segment_s must be > 0, got {clip_seconds}, {segment_s}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores contain {int((~np.isfinite(scores)).sum())} non-finite values")
    out: dict[str, Any] = {
        "event_clips": int(strong.sum()),
        "segment_threshold": float(threshold),
        "segment_s": float(segment_s),
    }
    reference = reference_segments(events, clips, classes, clip_seconds, segment_s)
    if not strong.any():
        return out
    picked = scores if strong.all() else scores[strong]
    seg = segment_max(picked, clip_seconds, segment_s)[:, :, mask]
    reference = reference[strong][:, :, mask]
    system = seg >= np.asarray(threshold, dtype=seg.dtype)  # float32 scores meet "0.45"
    out.update(segment_counts(reference, system))
    ap = average_precision(seg.reshape(-1, seg.shape[2]), reference.reshape(-1, seg.shape[2]))
    scored = ~np.isnan(ap)
    out["segment_ap"] = float(ap[scored].mean()) if scored.any() else math.nan
    out["segment_ap_classes"] = int(scored.sum())
    return out

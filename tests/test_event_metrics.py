"""Segment-based event metrics against sed_eval (F1, P, R, ER) and sed_scores_eval (AP).

Both references are development dependencies; the tables they read are built from the same
arrays that dcls_audio.train.event_metrics gets. Timing (not asserted, the machine is shared):
2000 clips x 100 frames x 527 classes, 10-s clips, all or 90 % strong, took 0.9 s (one
thread, float32 scores, a loaded 2-core machine).
"""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from dcls_audio.train.event_metrics import (
    EVENT_METRIC_KEYS,
    average_precision,
    best_threshold,
    event_metrics,
    reference_segments,
    segment_counts,
    segment_max,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # dcase_util imports pkg_resources
    import sed_eval
    from sed_scores_eval.base_modules.scores import create_score_dataframe
    from sed_scores_eval.segment_based import average_precision as sse_average_precision


def label(c: int) -> str:
    return f"c{c}"


def clip_events(events: list, n: int, clip_s: float) -> list[tuple[float, float, int]]:
    """The events of clip n, clipped to the clip, without padding or empty ones."""
    out = []
    for on, off, c in events[n]:
        on, off = max(0.0, on), min(clip_s, off)
        if c >= 0 and off > on:
            out.append((on, off, int(c)))
    return out


def merged(evs: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Overlapping or touching same-class events joined (sed_scores_eval wants them apart)."""
    out: list[list] = []
    for on, off, c in sorted(evs, key=lambda e: (e[2], e[0])):
        if out and out[-1][2] == c and on <= out[-1][1]:
            out[-1][1] = max(out[-1][1], off)
        else:
            out.append([on, off, c])
    return [tuple(e) for e in out]


def frame_events(track: np.ndarray, clip_s: float, thr: float) -> list[tuple[float, float, int]]:
    """Runs of frames scoring >= thr as events (edges rounded to 6 decimals)."""
    frames = track.shape[0]
    edges = np.round(np.arange(frames + 1) * clip_s / frames, 6)
    out = []
    active = track >= np.asarray(thr, dtype=track.dtype)
    for c in range(track.shape[1]):
        d = np.diff(np.concatenate([[0], active[:, c].astype(int), [0]]))
        for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True):
            out.append((float(edges[a]), float(edges[b]), c))
    return out


def with_sed_eval(scores, events, strong, clip_s, mask, thr, seg_s) -> dict:
    classes = [c for c in range(scores.shape[2]) if mask[c]]
    metrics = sed_eval.sound_event.SegmentBasedMetrics(
        event_label_list=[label(c) for c in classes], time_resolution=seg_s
    )
    for n in np.flatnonzero(strong):
        name = f"clip{n}.wav"

        def rows(evs, name=name):
            return [
                {"filename": name, "event_label": label(c), "onset": on, "offset": off}
                for on, off, c in evs
                if c in classes
            ]

        ref = rows(clip_events(events, n, clip_s))
        est = rows(frame_events(scores[n], clip_s, thr))
        metrics.evaluate(ref, est, evaluated_length_seconds=clip_s)
    overall = metrics.results_overall_metrics()
    return {
        "segment_f1": overall["f_measure"]["f_measure"],
        "segment_precision": overall["f_measure"]["precision"],
        "segment_recall": overall["f_measure"]["recall"],
        "segment_error_rate": overall["error_rate"]["error_rate"],
    }


def with_sed_scores_eval(scores, events, strong, clip_s, mask, seg_s) -> tuple[float, dict]:
    """Mean segment AP over the masked classes that have reference events, and per class."""
    gt = {f"clip{n}": merged(clip_events(events, n, clip_s)) for n in np.flatnonzero(strong)}
    present = sorted({c for evs in gt.values() for _, _, c in evs if mask[c]})
    frames = scores.shape[1]
    edges = np.arange(frames + 1) * clip_s / frames
    tables = {
        f"clip{n}": create_score_dataframe(
            scores[n][:, present].astype(np.float64), edges, [label(c) for c in present]
        )
        for n in np.flatnonzero(strong)
    }
    truth = {
        k: [(on, off, label(c)) for on, off, c in evs if c in present] for k, evs in gt.items()
    }
    ap, _ = sse_average_precision(
        tables, truth, dict.fromkeys(tables, clip_s), segment_length=seg_s
    )
    return float(np.mean([ap[label(c)] for c in present])), {c: ap[label(c)] for c in present}


def random_case(seed: int, clips: int, frames: int, classes: int, clip_s: float):
    rng = np.random.default_rng(seed)
    scores = rng.random((clips, frames, classes)).astype(np.float32)
    scores = np.where(rng.random(scores.shape) < 0.3, np.round(scores, 1), scores)  # ties, 0.5s
    scores = scores * (rng.random((clips, 1, classes)) < 0.6)  # classes silent in some clips
    events = []
    for _ in range(clips):
        k = int(rng.integers(0, 4))
        on = rng.uniform(-0.5, clip_s, k)
        on = np.where(rng.random(k) < 0.3, np.floor(on), on)  # on segment borders
        off = on + rng.uniform(0.05, 4.0, k)
        off = np.where(rng.random(k) < 0.3, np.ceil(off), off)
        cls = rng.integers(0, classes - 1, k)  # the last class never has an event
        events.append([(float(a), float(b), int(c)) for a, b, c in zip(on, off, cls, strict=True)])
    strong = rng.random(clips) < 0.8
    strong[0] = True
    mask = rng.random(classes) < 0.8
    mask[[0, classes - 1]] = True
    return scores, events, strong, mask


def padded(events: list, width: int) -> np.ndarray:
    out = np.zeros((len(events), width, 3))
    out[:, :, 2] = -1
    for n, evs in enumerate(events):
        if evs:
            out[n, : len(evs)] = evs
    return out


CASES = [  # seed, clips, frames, classes, clip seconds, segment seconds, threshold
    (0, 40, 40, 6, 10.0, 1.0, 0.5),  # 0.25-s frames, binary exact
    (1, 30, 100, 5, 10.0, 1.0, 0.5),  # 0.1-s frames: edges need the rounding
    (2, 30, 7, 5, 10.0, 1.0, 0.3),  # frames longer than segments, across their borders
    (3, 25, 19, 4, 9.5, 1.0, 0.5),  # the last segment reaches past the clip
    (4, 25, 50, 4, 5.0, 0.5, 0.6),  # half-second segments
]


@pytest.mark.parametrize(("seed", "clips", "frames", "classes", "clip_s", "seg_s", "thr"), CASES)
def test_random_cases_match_sed_eval_and_sed_scores_eval(
    seed, clips, frames, classes, clip_s, seg_s, thr
):
    scores, events, strong, mask = random_case(seed, clips, frames, classes, clip_s)
    got = event_metrics(scores, padded(events, 3), strong, clip_s, mask, thr, seg_s)
    assert got["event_clips"] == int(strong.sum()) and got["segment_threshold"] == thr
    want = with_sed_eval(scores, events, strong, clip_s, mask, thr, seg_s)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert 0 < got["segment_f1"] < 1 and got["segment_error_rate"] > 0
    mean_ap, per_class = with_sed_scores_eval(scores, events, strong, clip_s, mask, seg_s)
    assert got["segment_ap"] == pytest.approx(mean_ap, abs=1e-6)
    assert got["segment_ap_classes"] == len(per_class) < int(mask.sum())  # last class: no events
    # the per-class values too, and scikit-learn's AP on the same segments
    seg = segment_max(scores[strong], clip_s, seg_s).reshape(-1, classes)
    ref = reference_segments(events, clips, classes, clip_s, seg_s)[strong].reshape(-1, classes)
    ap = average_precision(seg, ref)
    for c, value in per_class.items():
        assert ap[c] == pytest.approx(value, abs=1e-9)
        assert ap[c] == pytest.approx(average_precision_score(ref[:, c], seg[:, c]), abs=1e-9)
    assert np.isnan(ap[classes - 1])


def test_list_and_padded_events_agree_and_pre_reduced_frames_give_the_same():
    scores, events, strong, mask = random_case(7, 20, 40, 5, 10.0)
    a = event_metrics(scores, events, strong, 10.0, mask)
    b = event_metrics(scores, padded(events, 5), strong, 10.0, mask)
    c = event_metrics(segment_max(scores, 10.0), padded(events, 5), strong, 10.0, mask)
    assert a == b == c
    d = event_metrics(
        torch.from_numpy(scores), torch.from_numpy(padded(events, 5)).float(),
        torch.from_numpy(strong), 10.0, torch.from_numpy(mask),
    )  # fmt: skip
    assert d == a


def hand_case() -> tuple[np.ndarray, list, np.ndarray]:
    """Two 4-s clips of 1-s frames; clip 1 is weak-only and would score perfectly."""
    scores = np.zeros((2, 4, 2), dtype=np.float32)
    scores[0, :, 0] = [0.2, 0.9, 0.6, 0.1]  # at 0.5: seg 1 TP, seg 2 FP
    scores[0, :, 1] = [0.7, 0.4, 0.8, 0.3]  # seg 0 FP, seg 2 TP, seg 3 FN
    scores[1] = 0.99
    events = [[(1.0, 2.0, 0), (2.5, 4.0, 1)], [(0.0, 4.0, 0), (0.0, 4.0, 1)]]
    return scores, events, np.array([True, False])


def test_hand_made_case():
    scores, events, strong = hand_case()
    got = event_metrics(scores, events, strong, 4.0)
    # TP 2, FP 2, FN 1; per segment: insertion, -, insertion, deletion over 3 references
    assert got["segment_f1"] == pytest.approx(4 / 7)
    assert got["segment_precision"] == pytest.approx(0.5)
    assert got["segment_recall"] == pytest.approx(2 / 3)
    assert got["segment_error_rate"] == pytest.approx(1.0)
    # class 0: the positive ranks first (AP 1); class 1: positives ranked 1st and 4th
    assert got["segment_ap"] == pytest.approx((1.0 + (1 + 2 / 4) / 2) / 2)
    assert got["event_clips"] == 1 and got["segment_ap_classes"] == 2
    for key, value in with_sed_eval(scores, events, strong, 4.0, [True] * 2, 0.5, 1.0).items():
        assert got[key] == pytest.approx(value, abs=1e-9)
    # an all-negative strong clip adds one false positive and pushes no positive down
    scores = np.concatenate([scores, np.zeros((1, 4, 2), np.float32)])
    scores[2, 0, 0] = 0.55
    more = event_metrics(scores, [*events, []], np.array([True, False, True]), 4.0)
    assert more["segment_f1"] == pytest.approx(4 / 8)
    assert more["segment_error_rate"] == pytest.approx(4 / 3)
    assert more["segment_ap"] == got["segment_ap"] and more["event_clips"] == 2


def test_threshold_is_inclusive_and_ties_are_one_operating_point():
    scores = np.array([[[0.5], [0.5]]], dtype=np.float32)  # 2 s of 1-s frames, both 0.5
    for first in ([(0.0, 1.0, 0)], [(1.0, 2.0, 0)]):  # the positive segment first or second
        got = event_metrics(scores, [first], np.array([True]), 2.0)
        assert got["segment_precision"] == 0.5 and got["segment_recall"] == 1.0
        assert got["segment_ap"] == 0.5  # not 1 or 0.5 by input order
    # float32 scores of 0.45 are active at threshold 0.45, as dcls_audio.events decides
    scores = np.full((1, 2, 1), 0.45, dtype=np.float32)
    assert event_metrics(scores, [[]], np.array([True]), 2.0, threshold=0.45)["segment_f1"] == 0


def test_events_and_frames_touching_segment_borders():
    # 0.5-s frames; an event [1, 2] marks segment 1 only, a frame [0.5, 1) segment 0 only
    ref = reference_segments([[(1.0, 2.0, 0), (2.0, 2.0, 1)]], 1, 2, 4.0)
    assert ref[0, :, 0].tolist() == [False, True, False, False]
    assert not ref[0, :, 1].any()  # zero length: no segment
    track = np.zeros((1, 8, 1), np.float32)
    track[0, 1, 0] = 1.0
    assert segment_max(track, 4.0)[0, :, 0].tolist() == [1, 0, 0, 0]
    # 0.1-s frames: frame 29 ends at 3.0 once rounded, so segment 3 stays out
    track = np.zeros((1, 100, 1), np.float32)
    track[0, 29, 0] = 1.0
    assert segment_max(track, 10.0)[0, :, 0].nonzero()[0].tolist() == [2]
    # an event past the clip's end is cut at it; a 9.5-s clip has a 10th (half) segment
    ref = reference_segments([[(8.2, 12.0, 0)]], 1, 1, 9.5)
    assert ref.shape == (1, 10, 1) and ref[0, :, 0].nonzero()[0].tolist() == [8, 9]
    # a clip length with float noise: still 10 segments, frame 2 still ends at segment 3
    track = np.zeros((1, 10, 1), np.float32)
    track[0, 2, 0] = 1.0
    noisy = segment_max(track, 10.0 + 1e-9)
    assert noisy.shape == (1, 10, 1) and noisy[0, :, 0].nonzero()[0].tolist() == [2]


def test_class_mask_leaves_classes_out():
    scores, events, strong, _ = random_case(11, 20, 40, 4, 10.0)
    mask = np.array([True, True, False, True])
    got = event_metrics(scores, events, strong, 10.0, mask)
    renumbered = [[(a, b, {0: 0, 1: 1, 3: 2}[c]) for a, b, c in evs if c != 2] for evs in events]
    same = event_metrics(scores[:, :, [0, 1, 3]], renumbered, strong, 10.0)
    assert got == same
    everything = event_metrics(scores, events, strong, 10.0)
    assert everything["segment_f1"] != got["segment_f1"]


def test_no_strong_clips_leaves_the_metrics_out():
    scores, events, _, _ = random_case(3, 5, 10, 3, 10.0)
    got = event_metrics(scores, events, np.zeros(5, bool), 10.0)
    assert got == {"event_clips": 0, "segment_threshold": 0.5, "segment_s": 1.0}
    assert not set(EVENT_METRIC_KEYS) & set(got)


def test_all_negative_strong_clips():
    scores = np.zeros((3, 10, 2), np.float32)
    silent = event_metrics(scores, [[], [], []], np.ones(3, bool), 10.0)
    assert math.isnan(silent["segment_f1"]) and math.isnan(silent["segment_recall"])
    assert math.isnan(silent["segment_ap"]) and silent["segment_ap_classes"] == 0
    scores[1, 4, 1] = 0.9
    noisy = event_metrics(scores, [[], [], []], np.ones(3, bool), 10.0)
    assert noisy["segment_f1"] == 0.0 and noisy["segment_precision"] == 0.0
    assert math.isnan(noisy["segment_error_rate"])  # no reference segment to count against


def test_a_system_that_marks_nothing_scores_f1_zero():
    # sed_eval gives NaN here (precision 0/0); F1 = 2TP / (2TP + FP + FN) is 0
    scores = np.zeros((1, 10, 1), np.float32)
    got = event_metrics(scores, [[(2.0, 3.0, 0)]], np.array([True]), 10.0)
    assert got["segment_f1"] == 0.0 and math.isnan(got["segment_precision"])
    assert got["segment_recall"] == 0.0 and got["segment_error_rate"] == 1.0
    assert got["segment_ap"] == pytest.approx(0.1)  # all ten segments tie at 0


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([[(3.0, 2.0, 0)]], "clip 0, row 0"),
        ([[], [(1.0, 2.0, 0), (1.0, 2.0, 5)]], "clip 1, row 1"),
        ([[(1.0, 2.0, -2)], []], "clip 0, row 0"),
        ([[(float("nan"), 2.0, 0)], []], "onset <= offset"),
    ],
)
def test_bad_events_are_named(events, message):
    scores = np.zeros((2, 10, 3), np.float32)
    with pytest.raises(ValueError, match=message):
        event_metrics(scores, events + [[]] * (2 - len(events)), np.ones(2, bool), 10.0)


def test_bad_shapes():
    scores = np.zeros((2, 10, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(2, E, 3\)"):
        event_metrics(scores, np.zeros((2, 4, 2)), np.ones(2, bool), 10.0)
    with pytest.raises(ValueError, match="strong"):
        event_metrics(scores, [[], []], np.ones(3, bool), 10.0)
    with pytest.raises(ValueError, match="class_mask"):
        event_metrics(scores, [[], []], np.ones(2, bool), 10.0, class_mask=np.ones(2, bool))
    with pytest.raises(ValueError, match="non-finite"):
        event_metrics(scores + np.nan, [[], []], np.ones(2, bool), 10.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_is_the_f1_maximum(seed):
    """Against every candidate threshold (segment_counts at >=) and sklearn's PR curve."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((40, 10, 6)), 1).astype(np.float32)  # many ties
    positives = rng.random(scores.shape) < 0.7 * scores
    threshold, f1 = best_threshold(scores, positives)
    brute = [segment_counts(positives, scores >= v)["segment_f1"] for v in np.unique(scores)]
    assert f1 == pytest.approx(max(brute))
    assert segment_counts(positives, scores >= threshold)["segment_f1"] == pytest.approx(f1)
    assert not np.isin(np.float32(threshold), scores)  # halfway between two scores
    precision, recall, _ = precision_recall_curve(positives.ravel(), scores.ravel())
    with np.errstate(invalid="ignore"):
        assert f1 == pytest.approx(np.nanmax(2 * precision * recall / (precision + recall)))


def test_best_threshold_hand_computed_and_without_positives():
    scores, labels = np.array([0.9, 0.8, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 1, 0], bool)
    # >= 0.9: F1 2/4; >= 0.8 (the tie enters whole): 4/6; >= 0.3: 6/7; >= 0.1: 6/8
    threshold, f1 = best_threshold(scores, labels)
    assert f1 == pytest.approx(6 / 7) and threshold == pytest.approx(0.2)
    assert all(math.isnan(v) for v in best_threshold(scores, np.zeros(5, bool)))
    with pytest.raises(ValueError, match="differ in size"):
        best_threshold(scores, labels[:4])

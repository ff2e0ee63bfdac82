import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from dcls_audio.runfiles import jsonable
from dcls_audio.train.metrics import compute_metrics


def _ap_by_hand(y: np.ndarray, s: np.ndarray) -> float:
    """Mean of precision@k over the ranks k of the positives (no ties in s)."""
    order = np.argsort(-s)
    hits = y[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, len(y) + 1)
    return float(precision_at_k[hits == 1].sum() / hits.sum())


def _auc_by_hand(y: np.ndarray, s: np.ndarray) -> float:
    """Fraction of (positive, negative) pairs ranked correctly (no ties in s)."""
    pos, neg = s[y == 1], s[y == 0]
    return float((pos[:, None] > neg[None, :]).mean())


def test_tiny_case_by_hand():
    # class 0: ranks 1 and 3 are positives -> AP = (1/1 + 2/3) / 2; AUC = 3 of 4 pairs
    # class 1: no positives -> excluded; class 2: all positive -> AP 1, no AUC
    scores = np.array(
        [[0.9, 0.1, 0.3], [0.8, 0.2, 0.2], [0.7, 0.3, 0.4], [0.6, 0.4, 0.1]], dtype=np.float32
    )
    targets = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=np.float32)
    m = compute_metrics(scores, targets)
    ap0 = (1.0 + 2.0 / 3.0) / 2.0
    assert m["per_class_ap"][0] == pytest.approx(ap0)
    assert math.isnan(m["per_class_ap"][1])
    assert m["per_class_ap"][2] == pytest.approx(1.0)
    assert m["map"] == pytest.approx((ap0 + 1.0) / 2.0)
    assert m["mauc"] == pytest.approx(0.75)
    assert m["dprime"] == pytest.approx(math.sqrt(2.0) * 0.6744897501960817)
    assert m["num_classes_scored"] == 2
    assert m["num_classes_auc"] == 1
    assert len(m["per_class_ap"]) == 3


def test_random_case_equals_sklearn_and_hand_formulas():
    rng = np.random.default_rng(0)
    n, c = 60, 9
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    targets[:, 4] = 0  # no positives
    targets[:, 7] = 1  # no negatives
    scores = (rng.random((n, c)) + 0.4 * targets).astype(np.float32)
    m = compute_metrics(scores, targets)

    has_pos = targets.sum(0) > 0
    has_both = has_pos & (targets.sum(0) < n)
    # sklearn's own macro averaging over the valid columns (a different code path)
    ref_map = average_precision_score(targets[:, has_pos], scores[:, has_pos], average="macro")
    ref_mauc = roc_auc_score(targets[:, has_both], scores[:, has_both], average="macro")
    assert m["map"] == pytest.approx(ref_map, abs=1e-12)
    assert m["mauc"] == pytest.approx(ref_mauc, abs=1e-12)
    assert m["dprime"] == pytest.approx(math.sqrt(2.0) * norm.ppf(ref_mauc), abs=1e-12)
    assert m["num_classes_scored"] == c - 1
    assert m["num_classes_auc"] == c - 2

    for k in range(c):
        if not has_pos[k]:
            assert math.isnan(m["per_class_ap"][k])
            continue
        assert m["per_class_ap"][k] == pytest.approx(_ap_by_hand(targets[:, k], scores[:, k]))
    hand_auc = np.mean([_auc_by_hand(targets[:, k], scores[:, k]) for k in np.where(has_both)[0]])
    assert m["mauc"] == pytest.approx(hand_auc)


def test_bool_targets_and_perfect_ranking():
    targets = np.array([[True, False], [False, True], [True, True], [False, False]])
    scores = targets.astype(np.float32) * 2 - 1
    m = compute_metrics(scores, targets)
    assert m["map"] == pytest.approx(1.0)
    assert m["mauc"] == pytest.approx(1.0)
    assert m["dprime"] == math.inf


def test_no_positive_anywhere_gives_nan():
    m = compute_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    assert math.isnan(m["map"]) and math.isnan(m["mauc"]) and math.isnan(m["dprime"])
    assert m["num_classes_scored"] == 0


@pytest.mark.parametrize(
    "scores, targets, match",
    [
        (np.zeros(4), np.zeros(4), "2-D"),
        (np.zeros((4, 3)), np.zeros((4, 2)), "same shape"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "at least one clip"),
        (np.full((2, 2), np.nan), np.zeros((2, 2)), "non-finite"),
        (np.zeros((2, 2)), np.full((2, 2), 0.5), "binary"),
    ],
)
def test_bad_input_is_rejected(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(scores, targets)


def test_json_safe_is_strict_json():
    m = compute_metrics(np.array([[0.2, 0.1], [0.3, 0.5]]), np.array([[1, 0], [0, 0]]))
    text = json.dumps(jsonable(m), allow_nan=False)
    back = json.loads(text)
    assert back["per_class_ap"][1] is None
    assert back["mauc"] == 0.0
    assert back["dprime"] is None  # -inf
    assert back["map"] == pytest.approx(0.5)

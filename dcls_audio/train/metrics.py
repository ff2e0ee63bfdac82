"""AudioSet tagging metrics: macro mAP, mean ROC AUC, d-prime and per-class AP.

The definitions follow the paper (and PANNs/AST): average precision and ROC AUC are computed per
class with scikit-learn and then averaged over classes (macro). A class with no positive clip in
the evaluation set has no defined AP and is left out of the mean (its AP is reported as NaN); a
class whose clips are all positive or all negative has no defined AUC and is left out of the AUC
mean. d' = sqrt(2) * Phi^-1(mAUC), with Phi^-1 the standard normal quantile function.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score


def _check_inputs(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values; return float64 scores and 0/1 int targets."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(
            f"scores must be a 2-D array (num_clips, num_classes), got shape {scores.shape}"
        )
    if targets.shape != scores.shape:
        raise ValueError(
            f"targets must have the same shape as scores {scores.shape}, got {targets.shape}"
        )
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must hold at least one clip and one class, got {scores.shape}")
    scores = scores.astype(np.float64, copy=False)
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise ValueError(f"scores contain {bad} non-finite values (NaN or inf)")
    targets_f = targets.astype(np.float64, copy=False)
    if not np.all((targets_f == 0.0) | (targets_f == 1.0)):
        raise ValueError(
            "evaluation targets must be binary (0/1 or bool); got values other than 0 and 1 "
            "(soft or mixed-up targets are only meaningful for the training loss)"
        )
    return scores, targets_f.astype(np.int64)


def compute_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Macro mAP, mean AUC, d' and per-class AP of (N, C) scores against (N, C) 0/1 targets.

    Returns a dict with `map`, `mauc`, `dprime` (floats; NaN when no class can be scored),
    `per_class_ap` (list of C floats, NaN for classes without positives), `num_classes_scored`
    (classes entering the mAP) and `num_classes_auc` (classes entering the mAUC).
    """
    scores, targets = _check_inputs(scores, targets)
    num_clips, num_classes = scores.shape
    positives = targets.sum(axis=0)

    per_class_ap: list[float] = []
    aucs: list[float] = []
    for c in range(num_classes):
        if positives[c] == 0:
            per_class_ap.append(math.nan)
            continue
        per_class_ap.append(float(average_precision_score(targets[:, c], scores[:, c])))
        if positives[c] < num_clips:
            aucs.append(float(roc_auc_score(targets[:, c], scores[:, c])))

    scored = [ap for ap in per_class_ap if not math.isnan(ap)]
    map_ = float(np.mean(scored)) if scored else math.nan
    mauc = float(np.mean(aucs)) if aucs else math.nan
    dprime = float(math.sqrt(2.0) * norm.ppf(mauc)) if aucs else math.nan
    return {
        "map": map_,
        "mauc": mauc,
        "dprime": dprime,
        "per_class_ap": per_class_ap,
        "num_classes_scored": len(scored),
        "num_classes_auc": len(aucs),
    }

"""Task types (``data.task``): the loss, the output activation and the metrics of each.

- ``multilabel`` (AudioSet, the paper): sigmoid outputs, ``BCEWithLogitsLoss``, mAP/mAUC/d′;
  label smoothing is applied by the mixup step (the paper's recipe, unchanged).
- ``multiclass`` (ESC-50, SpeechCommands, GTZAN: one label per clip): softmax outputs,
  cross-entropy on soft targets with label smoothing ``augment.label_smoothing`` (applied with or
  without mixup; mixup mixes the one-hot targets), and accuracy, macro-F1, per-class recall and
  the confusion matrix beside the one-vs-rest mAP/mAUC/d′ of the softmax scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dcls_audio.train.metrics import compute_metrics

TASKS = ("multilabel", "multiclass")
MULTICLASS_KEYS = ("accuracy", "macro_f1", "per_class_recall", "confusion_matrix")
CONFUSION_CSV = "confusion.csv"
CONFUSION_PNG = "confusion.png"


def check_task(task: str) -> str:
    """``data.task`` validated: one of `TASKS`."""
    if task not in TASKS:
        raise ValueError(f"data.task={task!r}; expected one of {list(TASKS)}")
    return task


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against probability targets, smoothed as ``y (1 - eps) + eps / C``."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), found {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``-sum_c y_c log softmax(logits)_c``."""
        eps = self.label_smoothing
        target = target * (1.0 - eps) + eps / target.shape[1]
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def multiclass_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall and confusion matrix of (N, C) scores, one-hot targets.

    The prediction is the arg-max class. Macro-F1 averages the F1 of the classes that occur in
    the targets or the predictions (scikit-learn's default label set); per-class recall is NaN
    for a class without clips. ``confusion_matrix[i][j]`` counts clips of class i predicted j.
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape or scores.shape[0] == 0:
        raise ValueError(
            f"expected (N, C) scores and targets, found {scores.shape}, {targets.shape}"
        )
    per_row = (targets > 0).sum(axis=1)
    if not np.all(per_row == 1):
        bad = int(np.sum(per_row != 1))
        raise ValueError(
            f"multiclass metrics: {bad} evaluation clips do not have exactly one label "
            "(data.task=multiclass needs single-label data; use data.task=multilabel)"
        )
    c = scores.shape[1]
    truth, pred = targets.argmax(axis=1), scores.argmax(axis=1)
    cm = np.bincount(truth * c + pred, minlength=c * c).reshape(c, c)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    present = denom > 0
    return {
        "accuracy": float(tp.sum() / len(truth)),
        "macro_f1": float(f1[present].mean()),
        "per_class_recall": [float(r) for r in recall],
        "confusion_matrix": cm.tolist(),
    }


@dataclass
class Task:
    """What differs between the task types: loss, output activation, metrics."""

    name: str
    criterion: nn.Module
    activation: str  # "sigmoid" or "softmax": scores handed to the metrics
    selection: str  # the metric that picks best.pt: mAP (multilabel), accuracy (multiclass)

    def metrics(self, scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Every metric of the task (mAP/mAUC/d′ for both; the multiclass ones in addition)."""
        found = compute_metrics(scores, targets)
        if self.name == "multiclass":
            found.update(multiclass_metrics(scores, targets))
        return found


def build_task(task: str, label_smoothing: float, mixup: Any = None) -> Task:
    """The `Task` of ``data.task`` (``label_smoothing``: ``augment.label_smoothing``).

    For multiclass the loss smooths the targets, so the run's ``mixup`` (if given) is set to mix
    the plain one-hot targets (mixing and smoothing commute: the result is the same).
    """
    if check_task(task) == "multiclass":
        if mixup is not None:
            mixup.label_smoothing = 0.0
        return Task("multiclass", SoftTargetCrossEntropy(label_smoothing), "softmax", "accuracy")
    return Task("multilabel", nn.BCEWithLogitsLoss(), "sigmoid", "map")


def write_confusion(run_dir: str | Path, matrix: list[list[int]], names: list[str]) -> list[Path]:
    """Write the confusion matrix as CSV (rows: true class, columns: predicted) and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dcls_audio.runfiles import atomic_write, write_text

    run_dir = Path(run_dir)
    cm = np.asarray(matrix, dtype=np.int64)

    def cell(s: str) -> str:
        return '"' + s.replace('"', '""') + '"'

    lines = ["true\\predicted," + ",".join(cell(n) for n in names)]
    lines += [
        cell(n) + "," + ",".join(str(v) for v in row) for n, row in zip(names, cm, strict=True)
    ]
    csv_path = write_text(run_dir / CONFUSION_CSV, "\n".join(lines) + "\n")
    size = min(4 + 0.25 * len(names), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6)
    ax.set_title("confusion matrix (colour: fraction of the true class)")
    fig.tight_layout()
    png_path = atomic_write(run_dir / CONFUSION_PNG, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return [csv_path, png_path]


def summary_line(metrics: dict[str, Any]) -> str:
    """Accuracy and macro-F1 as a short text (multiclass runs)."""
    acc, f1 = metrics.get("accuracy"), metrics.get("macro_f1")
    if acc is None:
        return ""
    return f"accuracy {acc:.4f} macro-F1 {f1 if f1 is not None else math.nan:.4f}"

"""Multiclass task: metrics against scikit-learn, the soft-target loss against torch's, outputs."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from dcls_audio.train.tasks import (
    SoftTargetCrossEntropy,
    build_task,
    multiclass_metrics,
    write_confusion,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 200, 7
    truth = rng.integers(0, c - 1, n)  # class 6 never occurs in the targets
    scores = rng.random((n, c)) + 0.8 * np.eye(c)[truth] * rng.random((n, 1))
    targets = np.eye(c)[truth]
    m = multiclass_metrics(scores, targets)
    pred = scores.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    recall = recall_score(truth, pred, average=None, labels=range(c), zero_division=0)
    np.testing.assert_allclose(m["per_class_recall"][: c - 1], recall[: c - 1])
    assert math.isnan(m["per_class_recall"][c - 1])
    np.testing.assert_array_equal(
        m["confusion_matrix"], confusion_matrix(truth, pred, labels=range(c))
    )


def test_multiclass_metrics_hand_computed():
    targets = np.eye(3)[[0, 0, 1, 2]]
    scores = np.eye(3)[[0, 1, 1, 1]]
    m = multiclass_metrics(scores, targets)
    assert m["accuracy"] == 0.5
    # F1: class 0: 2*1/(2+1)=2/3; class 1: 2*1/(1+3)=1/2; class 2: 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["per_class_recall"] == [0.5, 1.0, 0.0]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_multilabel_targets_are_refused_by_multiclass_metrics():
    with pytest.raises(ValueError, match="1 evaluation clips do not have exactly one label"):
        multiclass_metrics(np.ones((2, 3)), np.array([[1, 0, 0], [1, 1, 0]]))


def test_soft_target_cross_entropy_equals_torch_with_smoothing():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 4, 2, 2, 3])
    onehot = torch.nn.functional.one_hot(labels, 5).float()
    for eps in (0.0, 0.1):
        ours = SoftTargetCrossEntropy(eps)(logits, onehot)
        ref = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=eps)
        torch.testing.assert_close(ours, ref)
    # mixed one-hot targets: the loss is linear in the target
    mixed = 0.3 * onehot + 0.7 * onehot.flip(0)
    ce = SoftTargetCrossEntropy(0.1)
    torch.testing.assert_close(
        ce(logits, mixed), 0.3 * ce(logits, onehot) + 0.7 * ce(logits, onehot.flip(0))
    )


def test_build_task_and_bad_name():
    assert build_task("multilabel", 0.1).activation == "sigmoid"
    task = build_task("multiclass", 0.1)
    assert task.activation == "softmax" and task.criterion.label_smoothing == 0.1
    scores = np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.05
    found = task.metrics(scores, np.eye(3)[[0, 1, 2, 1]])
    assert found["accuracy"] == 0.75 and "map" in found and "confusion_matrix" in found
    with pytest.raises(ValueError, match=r"data.task='single'; expected one of"):
        build_task("single", 0.0)


def test_confusion_files(tmp_path):
    paths = write_confusion(tmp_path, [[2, 1], [0, 3]], ["dog", 'a "cat"'])
    assert [p.name for p in paths] == ["confusion.csv", "confusion.png"]
    lines = (tmp_path / "confusion.csv").read_text().splitlines()
    assert lines == ['true\\predicted,"dog","a ""cat"""', '"dog",2,1', '"a ""cat""",0,3']
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"

"""Classification metrics on held-out data.

Plain numpy, computed as scikit-learn's metrics compute them (tests/test_cli_speed.py checks
that they agree): importing sklearn.metrics (scipy) costs about a second on every fit.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["classification_metrics"]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(len(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix
    (rows: true class, columns: predicted class, in `classes` order)."""
    k = len(classes)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = (y_true >= 0) & (y_true < k) & (y_pred >= 0) & (y_pred < k)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true[keep].astype(np.int64), y_pred[keep].astype(np.int64)), 1)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    recall = _ratio(tp, support.astype(np.float64))
    precision = _ratio(tp, predicted.astype(np.float64))
    f1 = _ratio(2 * tp, (support + predicted).astype(np.float64))
    present = np.union1d(y_true, y_pred)  # balanced accuracy: mean recall of true classes
    seen = [int(c) for c in present if 0 <= c < k and support[int(c)] > 0]
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": float(np.mean(recall[seen])),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy on n images, floored at one image's worth
    (a perfect score on few images is not certainty)."""
    n = max(n, 1)
    return math.sqrt(max(acc * (1 - acc), 1.0 / n) / n)


def paired_se(pred_a: np.ndarray, pred_b: np.ndarray, y: np.ndarray) -> float:
    """Standard error of acc(a) - acc(b) on the same images (from the discordant pairs),
    floored at one image's worth."""
    a, b = pred_a == y, pred_b == y
    n = max(len(y), 1)
    d = a.astype(np.float64) - b.astype(np.float64)
    var = max(float(np.sum(d**2) - np.sum(d) ** 2 / n), 1.0)
    return math.sqrt(var) / n

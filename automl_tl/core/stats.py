"""Classification metrics on held-out data.

Plain numpy, computed as scikit-learn's metrics compute them (tests/test_cli_speed.py checks
that they agree): importing sklearn.metrics (scipy) costs about a second on every fit.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "classification_metrics",
    "standard_error",
    "paired_se",
    "softmax",
    "negative_log_likelihood",
    "calibration_bins",
    "expected_calibration_error",
    "fit_temperature",
    "conformal_pvalue",
]


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


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(z))


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean -log p(true class) of softmax(logits)."""
    if len(y) == 0:
        return float("nan")
    return float(-_log_softmax(logits)[np.arange(len(y)), np.asarray(y)].mean())


def calibration_bins(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict]:
    """Top-1 confidence in `bins` equal-width bins over (0, 1]: per non-empty bin its range,
    image count, mean confidence and accuracy (the reliability diagram's bars)."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            out.append({
                "low": round(float(edges[b]), 4),
                "high": round(float(edges[b + 1]), 4),
                "n": int(inside.sum()),
                "confidence": float(conf[inside].mean()),
                "accuracy": float((pred[inside] == np.asarray(y)[inside]).mean()),
            })  # fmt: skip
    return out


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): the count-weighted mean |accuracy - confidence| over `bins`
    equal-width bins of top-1 confidence."""
    n = len(y)
    if n == 0:
        return float("nan")
    return float(
        sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in calibration_bins(probs, y, bins))
        / n
    )


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the cross-entropy of softmax(logits / T) (Guo et al.,
    2017) against Platt's smoothed targets: 1 - 1/(n + 2) on the given class, the rest
    shared by the others. Without the smoothing a validation split with no errors would
    drive T towards 0 (certainty from a few dozen images); with n images it may claim no
    more than about 1 - 1/(n + 2).

    The loss is convex in 1/T, so a golden-section search over log(1/T) in [-5, 5] finds
    the minimum; T is 1 when there is nothing to fit on."""
    n = len(y)
    if n == 0:
        return 1.0
    z = np.asarray(logits, dtype=np.float64)
    k = z.shape[1]
    eps = 1.0 / (n + 2)
    target = np.full(z.shape, eps / max(k - 1, 1))
    target[np.arange(n), np.asarray(y)] = 1.0 - eps

    def loss(log_beta: float) -> float:
        return float(-(target * _log_softmax(z * math.exp(log_beta))).sum(axis=1).mean())

    lo, hi = -5.0, 5.0
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(math.exp(-(lo + hi) / 2))


def conformal_pvalue(scores: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """Conformal p-value of each score against held-out scores (low = unusual):
    (1 + #{held-out <= s}) / (n + 1), what the exported graph's ood_pvalue computes."""
    ref = np.sort(np.asarray(held_out, dtype=np.float32))
    below = np.searchsorted(ref, np.asarray(scores, dtype=np.float32), side="right")
    return (below + 1.0) / (len(ref) + 1.0)

"""Head training with early stopping, and the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from automl_tl.core.stats import classification_metrics
from automl_tl.core.tasks import HeadConfig
from automl_tl.train.heads import train_head


def _blobs(n, d=32, k=3, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(0, spread, (n, d))).astype(np.float32), y


def test_head_learns_separable_features():
    x, y = _blobs(300)
    res = train_head(x[:200], y[:200], x[200:], y[200:], 3, HeadConfig(epochs=60, seed=1))
    assert res.history[res.best_epoch - 1]["val_acc"] >= 0.95
    assert 1 <= res.best_epoch <= len(res.history)


def test_early_stopping_keeps_best_epoch_and_stops():
    rng = np.random.default_rng(3)  # labels unrelated to features: nothing to generalise
    x, y = rng.normal(size=(200, 16)).astype(np.float32), rng.integers(0, 3, 200)
    cfg = HeadConfig(epochs=200, patience=5, seed=0)
    res = train_head(x[:100], y[:100], x[100:], y[100:], 3, cfg)
    assert len(res.history) < 200
    assert len(res.history) - res.best_epoch == cfg.patience
    best_val = max(h["val_acc"] for h in res.history)
    assert res.history[res.best_epoch - 1]["val_acc"] == best_val


def test_training_is_seeded():
    x, y = _blobs(120)
    a = train_head(x[:80], y[:80], x[80:], y[80:], 3, HeadConfig(epochs=5, seed=7))
    b = train_head(x[:80], y[:80], x[80:], y[80:], 3, HeadConfig(epochs=5, seed=7))
    assert a.history == b.history


def test_metrics_by_hand():
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, classes)
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)
    assert m["per_class"]["a"]["precision"] == pytest.approx(3 / 4)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["recall"] == pytest.approx(1 / 2)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]

"""metrics.json: how the kept model did on every split, what training did, what the plan
expected and whether it was met, the warm start fine-tuning started from, and how the
validation split was made (which split chose the model, and what the test number means)."""

from __future__ import annotations

import time

import numpy as np

from ..core.stats import classification_metrics

__all__ = ["fit_metrics", "warm_metrics"]


def warm_metrics(warm, data, kept: str) -> dict:
    """The frozen choice the fine-tuning started from, scored like the kept model (so a
    reader sees what fine-tuning added, on validation and on test)."""
    out = {"view": warm.view, "validation_accuracy": round(warm.val_acc, 4)}
    if data.test:
        y = data.labels(data.test)
        out["test_accuracy"] = round(float(np.mean(warm.test_pred == y)), 4)
    out["kept"] = kept
    return out


def fit_metrics(trained, data, plan, seconds: float, cache_stats: dict, warm=None) -> dict:
    """Everything metrics.json holds but the export check (added once the model is written)."""
    pred_train, pred_val, pred_test = trained.predictions
    metrics = {
        "validation": classification_metrics(data.labels(data.val), pred_val, data.classes),
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "history": trained.history,
        "notes": list(trained.notes),
        "fit_seconds": round(seconds, 2),
    }
    if pred_train is not None:
        metrics["train_accuracy"] = float((pred_train == data.labels(data.train)).mean())
    if data.test:
        y_test = data.labels(data.test)
        metrics["test"] = classification_metrics(y_test, pred_test, data.classes)
    band = plan.expected_accuracy
    if band:
        acc = metrics["validation"]["accuracy"]
        metrics["expected_accuracy"] = {
            **band,
            "achieved": acc,
            "within": band["low"] <= acc <= band["high"],
        }
    metrics["feature_cache"] = cache_stats
    if warm is not None:
        metrics["warm_start"] = warm_metrics(warm, data, plan.outcome)
    metrics["split"] = data.summary
    metrics["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return metrics

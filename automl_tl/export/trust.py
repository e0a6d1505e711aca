"""What the exported model knows of its own limits, measured before it is exported:

- calibration: a temperature fitted on the validation split's logits, with the expected
  calibration error (15 bins) and NLL before and after, on validation (fitted there, and
  cross-fitted: fitted on one half, measured on the other) and on test when there is one;
- out-of-distribution: a reference of training images in the head's input space, and the
  held-out (validation) images' scores against it, from which the graph computes each new
  image's conformal p-value; flagged at p <= ALPHA;
- shift: one line each when the test split's accuracy falls outside what validation
  expected, or its images score further from the training data than validation's do.

The head inputs come from the feature cache for a frozen backbone (no image is decoded), else
from the trained extractor in torch on capped, stratified samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.stats import (
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
    standard_error,
)
from ..data.batches import iter_batches
from ..data.split import stratified_subset
from ..train.outputs import ModelOutputs, conformal_pvalue, knn_similarity, loo_similarity

__all__ = ["Trust", "assess", "ALPHA", "K_NEAREST"]

ALPHA = 0.05  # share of in-distribution images the OOD flag may flag
K_NEAREST = 5  # neighbours averaged by the OOD score
MAX_REFERENCE = 2000  # training images kept in the graph as the OOD reference
MAX_DECODED = 1000  # per split, when head inputs need the trained extractor (no cache)


@dataclass(frozen=True)
class Trust:
    outputs: ModelOutputs
    record: dict  # calibration, ood and shift, for metrics.json and the report


def _head_inputs(model, samples, prep, rows_of, batch_size: int = 32) -> np.ndarray:
    """(n, width) float32 head inputs: cached rows when `rows_of` is given, else the
    extractor on decoded images."""
    if not samples:
        return np.zeros((0, 0), np.float32)
    if rows_of is not None:
        return np.asarray(rows_of(samples), dtype=np.float32)
    out = []
    model = model.eval()
    with torch.inference_mode():
        for batch in iter_batches([s.path for s in samples], prep, batch_size):
            out.append(model.extractor(torch.from_numpy(batch)).flatten(1).numpy())
    return np.concatenate(out).astype(np.float32)


def _logits(head, feats: np.ndarray) -> np.ndarray:
    if len(feats) == 0:
        return np.zeros((0, 0), np.float32)
    head = head.eval()
    with torch.inference_mode():
        return np.concatenate(
            [
                head(torch.from_numpy(c)).numpy()
                for c in np.array_split(feats, -(-len(feats) // 4096))
            ]
        )


def _calibration(z: np.ndarray, y: np.ndarray, t: float) -> dict:
    def at(temp):
        p = softmax(z / temp)
        return {
            "ece": round(expected_calibration_error(p, y), 4),
            "nll": round(negative_log_likelihood(z / temp, y), 4),
        }

    return {"n": int(len(y)), "before": at(1.0), "after": at(t)}


def _cross_fitted(z: np.ndarray, y: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
    """Temperature fitted on one half of validation and measured on the other, both ways:
    an honest 'after' for a split the temperature was fitted on; and the out-of-half
    calibrated probabilities (for the reliability diagram when there is no test split)."""
    order = np.random.default_rng(seed).permutation(len(y))
    halves = (order[: len(y) // 2], order[len(y) // 2 :])
    probs = np.zeros(z.shape, np.float64)
    for fit_on, measure in (halves, halves[::-1]):
        probs[measure] = softmax(z[measure] / fit_temperature(z[fit_on], y[fit_on]))
    ece = expected_calibration_error(probs, y)
    nll = float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean()) if len(y) else 0
    return {"ece": round(ece, 4), "nll": round(nll, 4)}, probs


def _flagged(pvalues: np.ndarray) -> float:
    return round(float((pvalues <= ALPHA).mean()), 4) if len(pvalues) else 0.0


def _shift_lines(record: dict, val_acc: float, n_val: int, test_acc, n_test: int) -> list[str]:
    """What differs between test and validation, one line each, with the numbers."""
    lines = []
    if test_acc is not None and n_test:
        noise = 1.96 * math.hypot(standard_error(val_acc, n_val), standard_error(test_acc, n_test))
        if abs(test_acc - val_acc) > noise:
            side = "below" if test_acc < val_acc else "above"
            lines.append(
                f"test accuracy {test_acc:.4f} is {side} the validation accuracy {val_acc:.4f} "
                f"by more than both splits' noise ({noise:.4f}, 95%): the test images differ "
                "from the training and validation images"
            )
    ood = record["ood"]
    if "test_median_pvalue" in ood:
        n = ood["test_images"]
        # Under no shift test p-values are uniform: mean 0.5, standard error sqrt(1/(12 n)).
        z = (0.5 - ood["test_mean_pvalue"]) / math.sqrt(1 / (12 * n))
        if z > 3:
            lines.append(
                f"test images sit further from the training data than validation images: "
                f"median OOD p-value {ood['test_median_pvalue']:.2f} (0.5 expected), "
                f"{ood['test_flagged']:.1%} flagged (about {ALPHA:.0%} expected)"
            )
    return lines


def assess(model, data, prep, rows_of=None, seed: int = 0, console=None) -> Trust:
    """Calibration, the OOD reference and the shift lines of `model` (an ExportModel whose
    `outputs` are not set yet). `rows_of(samples)` gives cached head inputs (frozen
    backbones); without it the extractor runs on at most MAX_DECODED images per split."""
    model = model.to("cpu").eval()  # where export puts it too
    cap = None if rows_of is not None else MAX_DECODED
    val = data.val if cap is None else stratified_subset(data.val, cap, seed)
    test = data.test if cap is None else stratified_subset(data.test, cap, seed)
    ref_samples = stratified_subset(data.train, min(cap or MAX_REFERENCE, MAX_REFERENCE), seed)
    if console is not None:
        console.note(
            f"calibration and OOD reference: {len(ref_samples)} training, {len(val)} "
            f"validation, {len(test)} test images"
        )
    ref = _head_inputs(model, ref_samples, prep, rows_of)
    f_val = _head_inputs(model, val, prep, rows_of)
    y_val = data.labels(val)
    z_val = _logits(model.head, f_val)
    fitted = fit_temperature(z_val, y_val)
    crossed, probs_crossed = _cross_fitted(z_val, y_val, seed)
    # kept only when it measures better: the cross-fitted NLL below the uncalibrated one
    # (a split with no errors fits a softening temperature that costs NLL on such images)
    raw = round(negative_log_likelihood(z_val, y_val), 4)
    t = fitted if crossed["nll"] < raw else 1.0
    calibration = {
        "method": "temperature scaling",
        "temperature": round(t, 4),
        "fitted_on": f"validation ({len(y_val)} images)",
        "validation": _calibration(z_val, y_val, t),
    }
    calibration["validation"]["cross_fitted_after"] = crossed
    if t == 1.0:
        calibration["note"] = (
            f"the fitted temperature {fitted:.4f} did not lower the cross-fitted NLL "
            f"({crossed['nll']:.4f} vs {raw:.4f} uncalibrated): not applied"
        )
        probs_crossed = softmax(z_val)
    val_scores = knn_similarity(f_val, ref, K_NEAREST)
    # Frozen features were not trained on the training images: each reference image scored
    # against the others is one more held-out score (small data gets p-values fine enough
    # to flag at 5%). Fine-tuned features were, so they would score too close.
    loo = loo_similarity(ref, K_NEAREST) if rows_of is not None else np.zeros(0, np.float32)
    held_out = np.concatenate([val_scores, loo])
    half = np.random.default_rng(seed).permutation(len(val_scores))
    a, b = half[: len(half) // 2], half[len(half) // 2 :]
    crossed_flag = np.concatenate([
        conformal_pvalue(val_scores[b], np.concatenate([val_scores[a], loo])),
        conformal_pvalue(val_scores[a], np.concatenate([val_scores[b], loo])),
    ])  # fmt: skip
    against = "the validation images" + (
        " and, leave-one-out, the reference images" if len(loo) else ""
    )
    ood = {
        "method": f"mean cosine similarity of the head input to its {K_NEAREST} nearest of "
        f"the reference training images; conformal p-value against {against}",
        "threshold": ALPHA,
        "k": K_NEAREST,
        "reference_images": len(ref),
        "held_out_images": len(held_out),
        "validation_flagged_cross_fitted": _flagged(crossed_flag),
    }
    if len(held_out) + 1 < 1 / ALPHA:
        ood["note"] = (
            f"{len(held_out)} held-out images give p-values no smaller than "
            f"{1 / (len(held_out) + 1):.3f}: nothing can be flagged at {ALPHA}"
        )
    test_acc = None
    if test:
        f_test = _head_inputs(model, test, prep, rows_of)
        y_test = data.labels(test)
        z_test = _logits(model.head, f_test)
        calibration["test"] = _calibration(z_test, y_test, t)
        calibration["reliability"] = {
            "split": "test",
            "before": calibration_bins(softmax(z_test), y_test),
            "after": calibration_bins(softmax(z_test / t), y_test),
        }
        p_test = conformal_pvalue(knn_similarity(f_test, ref, K_NEAREST), held_out)
        ood.update(
            test_images=len(test),
            test_flagged=_flagged(p_test),
            test_median_pvalue=round(float(np.median(p_test)), 4),
            test_mean_pvalue=round(float(np.mean(p_test)), 4),
        )
        test_acc = float((z_test.argmax(1) == y_test).mean())
    else:
        calibration["reliability"] = {
            "split": "validation, cross-fitted (temperature fitted on the other half)",
            "before": calibration_bins(softmax(z_val), y_val),
            "after": calibration_bins(probs_crossed, y_val),
        }
    record = {"calibration": calibration, "ood": ood}
    val_acc = float((z_val.argmax(1) == y_val).mean()) if len(y_val) else 0.0
    record["shift"] = _shift_lines(record, val_acc, len(y_val), test_acc, len(test))
    return Trust(ModelOutputs(t, ref, held_out, K_NEAREST), record)

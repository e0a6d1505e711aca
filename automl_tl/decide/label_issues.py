"""Images whose given label is likely wrong, by confident learning (Northcutt, Jiang and Chuang,
"Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021), from out-of-fold
predicted probabilities that the cached features make cheap: a linear head per fold on the
chosen view's rows, each image scored by the head that did not see it.

Confident learning, as written here:

1. per class j, the threshold t_j is the mean predicted probability of j over the images
   labelled j (how confident the model is, on average, in a correct-looking j);
2. the confident joint C[i, j] counts images labelled i whose probability of j reaches t_j
   (the most probable such j when there are several);
3. C is calibrated so that each row sums to the number of images labelled i (rounded to
   whole images, keeping the row totals);
4. prune by noise rate: for every pair i != j, the C[i, j] images labelled i with the
   largest margin p_j - p_i are issues, suggested j (leaving at least one image per label);
   an image the model still predicts as its given label is not an issue.

These details follow the reference implementation (cleanlab's `find_label_issues` with
`filter_by="prune_by_noise_rate"`); tests/test_label_issues.py checks that both flag the same
images on the same probabilities.

Issues are ranked by self-confidence (the probability of the given label, lowest first); the
score is 1 - that probability. numpy only, besides the logistic regression of train.logreg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..features.memo import content_key
from ..train.logreg import as_float_rows, fit_logreg

__all__ = [
    "LabelIssues",
    "confident_joint",
    "find_label_issues",
    "out_of_fold_probabilities",
    "stratified_folds",
    "cross_fitted",
    "issues_of",
    "label_issues_record",
    "without_issues",
]


@dataclass(frozen=True)
class LabelIssues:
    """Indices of the images flagged (most likely wrong first), the class each is suggested
    to be, and its score (1 - the probability of the given label)."""

    index: np.ndarray
    suggested: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


def _round_rows(m: np.ndarray) -> np.ndarray:
    """Each row rounded to integers that keep the row's rounded total: rounded half to even,
    then the entries that rounding moved furthest are moved back one by one."""
    out = np.round(m)
    for i, row in enumerate(m):
        diff = int(round(row.sum()) - out[i].sum())
        if diff:
            step = 1 if diff > 0 else -1
            order = np.argsort(row - out[i], kind="stable")[::-step][: abs(diff)]
            out[i, order] += step
    return out.astype(np.int64)


def confident_joint(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The calibrated confident joint (k x k integers): rows the given label, columns the
    class the image confidently belongs to; each row sums to that label's image count."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    thresholds = np.array([probs[labels == j, j].mean() if counts[j] else np.inf for j in range(k)])
    above = probs >= thresholds - 1e-6  # (n, k): classes each image confidently belongs to
    n_above = above.sum(axis=1)
    # one class above its threshold: that class; several: the most probable class
    guess = np.where(n_above > 1, probs.argmax(axis=1), above.argmax(axis=1))
    has = n_above > 0
    joint = np.zeros((k, k), dtype=np.float64)
    np.add.at(joint, (labels[has], guess[has]), 1.0)
    rows = joint.sum(axis=1, keepdims=True)
    joint = np.divide(joint * counts[:, None], rows, out=np.zeros_like(joint), where=rows > 0)
    return _round_rows(joint)


def _leave_one(joint: np.ndarray) -> np.ndarray:
    """The counts to prune per (given, true) pair, leaving at least one image of every given
    label: a row with nothing on its diagonal gives one image back, taken evenly from its
    off-diagonal counts."""
    prune = joint.astype(np.float64).copy()
    for i in range(len(prune)):
        if prune[i, i] < 1:
            off = np.count_nonzero(prune[i]) - (prune[i, i] != 0)
            prune[i] = np.maximum(prune[i] - (1 - prune[i, i]) / max(off, 1), 0)
            prune[i, i] = 1
    return np.round(prune).astype(np.int64)


def find_label_issues(probs: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """Confident learning's prune-by-noise-rate issues of out-of-sample `probs` (n x k) for
    the given `labels` (n,), ranked by self-confidence. An image the model still predicts as
    its given label is never an issue."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n, k = probs.shape
    prune = _leave_one(confident_joint(probs, labels))
    flagged = np.zeros(n, dtype=bool)
    suggested = probs.argmax(axis=1).copy()
    best_margin = np.full(n, -np.inf)
    for i in range(k):
        mine = np.flatnonzero(labels == i)
        if len(mine) <= 1:
            continue
        for j in range(k):
            m = int(prune[i, j])
            if i == j or m <= 0:
                continue
            margin = probs[mine, j] - probs[mine, i]
            take = np.argsort(-margin, kind="stable")[:m]
            flagged[mine[take]] = True
            better = margin[take] > best_margin[mine[take]]  # suggest the widest margin's j
            suggested[mine[take][better]] = j
            best_margin[mine[take][better]] = margin[take][better]
    favoured = probs.copy()
    favoured[np.arange(n), labels] += 1e-6
    flagged &= favoured.argmax(axis=1) != labels
    index = np.flatnonzero(flagged)
    self_confidence = probs[index, labels[index]]
    order = np.argsort(self_confidence, kind="stable")
    index = index[order]
    return LabelIssues(index, suggested[index], 1.0 - self_confidence[order])


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, 0..folds-1: every class dealt round-robin in a seeded order."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % folds
    return fold


def out_of_fold_probabilities(
    rows, labels: np.ndarray, n_classes: int, C: float, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """(n, k) class probabilities, each image's from a logistic-regression head (L2 strength
    C) fitted on the other folds' rows; folds stratified by label."""
    import torch

    x = as_float_rows(rows)
    labels = np.asarray(labels)
    fold = stratified_folds(labels, folds, seed)
    out = np.zeros((len(labels), n_classes), dtype=np.float64)
    for f in range(folds):
        held, kept = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        if len(held) == 0:
            continue
        idx_h, idx_k = torch.from_numpy(held), torch.from_numpy(kept)
        result = fit_logreg(x[idx_k], labels[kept], x[idx_h], labels[held], n_classes, Cs=(C,))
        with torch.no_grad():
            out[held] = torch.softmax(result.head(x[idx_h]), dim=1).double().numpy()
    return out


_MEMO = "cross-fitted-v1"  # v1 was label-issues-v1: the issues without the predictions
FOLDS = 5


def cross_fitted(features, data, choice, seed: int, console=None) -> dict:
    """The frozen choice's linear head cross-fitted on the training and validation images
    (its view's cached rows, its C, `FOLDS` folds): {"predicted": each image's class by the
    head that did not see it, "issues": the label issues found from those probabilities}.
    Remembered by content (feature space, view, C, images, labels, seed): a warm re-fit
    measures nothing. The backbone search compares backbones by these predictions."""
    samples = data.train + data.val
    labels = data.labels(samples)
    entry = next((c for c in choice.candidates if c.get("view") == choice.view.name), {})
    C = float(choice.fit.C if choice.fit is not None else entry.get("C", 1.0))
    key = content_key(
        [features.space, choice.view.name, C, [s.digest for s in samples], labels.tolist(),
         seed, FOLDS]
    )  # fmt: skip
    known = features.memo.get(_MEMO, key)
    if isinstance(known, dict) and len(known.get("predicted", ())) == len(samples):
        return known
    if console is not None:
        console.note(
            f"cross-fitting: {FOLDS}-fold out-of-fold probabilities of the frozen head on "
            f"{len(samples)} training and validation images ({features.spec.name}), for "
            "the label issues"
        )
    rows = features.rows(samples, choice.view.name).dequantize().numpy()
    probs = out_of_fold_probabilities(rows, labels, len(data.classes), C, FOLDS, seed)
    found = find_label_issues(probs, labels)
    issues = [
        {
            "path": str(samples[i].path),
            "given": data.classes[int(labels[i])],
            "suggested": data.classes[int(j)],
            "score": round(float(score), 4),
        }
        for i, j, score in zip(found.index, found.suggested, found.score, strict=True)
    ]
    out = {"predicted": probs.argmax(1).tolist(), "issues": issues}
    features.memo.put(_MEMO, key, out)
    return out


def issues_of(features, data, choice, seed: int, console=None) -> tuple[list[dict], int]:
    """The label issues of the training and validation images (`cross_fitted`): rows (path,
    given, suggested, score), most likely wrong first, and how many images were checked."""
    return cross_fitted(features, data, choice, seed, console)["issues"], len(data.train + data.val)


def label_issues_record(issues: tuple, metrics: dict) -> dict:
    """metrics.json's `label_issues`: how many, of how many, how, and where the list is;
    `issues` is (rows, images checked[, what was dropped]) and `metrics` the fit's, whose
    validation and test accuracy are the "after" of a fit without the flagged images."""
    rows, checked = issues[:2]
    record = {
        "count": len(rows),
        "images_checked": checked,
        "method": f"confident learning (prune by noise rate) on {FOLDS}-fold out-of-fold "
        "probabilities of the frozen head, training and validation images",
        "file": "label_issues.csv",
    }
    if len(issues) > 2:  # dropped: the same validation and test images, before and after
        after = {"validation": metrics["validation"]["accuracy"]}
        if "test" in metrics:
            after["test"] = metrics["test"]["accuracy"]
        record["dropped"] = {**issues[2], "after": after}
    return record


def without_issues(data, rows: list[dict], choice, features):
    """`data` without the training images listed in `rows` (validation and test stay, so
    before and after are measured on the same images), and what was dropped: how many, and
    the frozen choice's accuracy before, on validation and on test."""
    import dataclasses

    import torch

    flagged = {r["path"] for r in rows}
    train = [s for s in data.train if str(s.path) not in flagged]
    view = choice.view.name
    entry = next((c for c in choice.candidates if c.get("view") == view), {})
    head = choice.fit.head if choice.fit is not None else None
    if head is None:
        head = fit_logreg(
            features.rows(data.train, view), data.labels(data.train),
            features.rows(data.val, view), data.labels(data.val), len(data.classes),
            Cs=(float(entry.get("C", 1.0)),),
        ).head  # fmt: skip
    before = {}
    for name, part in (("validation", data.val), ("test", data.test)):
        if part:
            with torch.no_grad():
                pred = head(features.rows(part, view).dequantize()).argmax(1).numpy()
            before[name] = round(float((pred == data.labels(part)).mean()), 4)
    n = len(data.train) - len(train)
    reason = (
        f"label issues: {n} training images flagged as mislabelled are left out "
        f"(--drop-label-issues; {len(rows) - n} flagged validation images stay, so before "
        "and after are measured on the same images); the frozen choice is made again"
    )
    return dataclasses.replace(data, train=train), {"images": n, "before": before, "reason": reason}

"""split: train / validation / test. A validation folder wins; otherwise a stratified, seeded
share of each training class; a test folder only ever gives one final evaluation."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..core.errors import DataError
from .audit import AuditReport, leakage_messages
from .files import Sample


def split(
    samples: list[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Return (train, val, test). A `val/` folder wins; otherwise a stratified, seeded
    `val_fraction` of each class of the training images. A `test/` folder is returned apart,
    never used as validation: it is for one final evaluation only."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.2)")
    by_split = defaultdict(list)
    for s in samples:
        by_split[s.split].append(s)
    test = by_split["test"]
    if by_split["val"]:
        return by_split["train"] + by_split[None], by_split["val"], test
    rng = np.random.default_rng(seed)
    by_label = defaultdict(list)
    for s in by_split["train"] + by_split[None]:
        by_label[s.label].append(s)
    train, val = [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda s: str(s.path))
        order = rng.permutation(len(group))
        n_val = min(max(1, round(len(group) * val_fraction)), len(group) - 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val, test


def split_summary(
    report: AuditReport,
    parts: tuple[list[Sample], list[Sample], list[Sample]],
    val_fraction: float,
    seed: int,
) -> dict:
    """What each split holds and did, for metrics.json, the CLI summary and the report."""
    train, val, test = parts
    from_folder = any(s.split == "val" for s in val)
    source = (
        "the validation folder"
        if from_folder
        else f"carved from the training images ({val_fraction:.0%} of each class, seed {seed})"
    )
    return {
        "train": len(train),
        "validation": len(val),
        "test": len(test),
        "validation_source": source,
        "model_chosen_on": "validation",
        "test_use": "one final evaluation, never used to choose anything" if test else None,
        "leakage": report.leakage,
        "leakage_messages": leakage_messages(report.leakage),
    }


def stratified_subset(samples: list[Sample], limit: int, seed: int = 0) -> list[Sample]:
    """At most `limit` samples keeping class proportions (all of them when fewer)."""
    if len(samples) <= limit:
        return list(samples)
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    labels = sorted(by_label)
    # Largest-remainder allocation of `limit`, at least one per class.
    quota = {c: limit * len(by_label[c]) / len(samples) for c in labels}
    count = {c: max(1, int(quota[c])) for c in labels}
    for c in sorted(labels, key=lambda c: quota[c] - int(quota[c]), reverse=True):
        if sum(count.values()) >= limit:
            break
        count[c] = min(len(by_label[c]), count[c] + 1)
    keep = []
    for c in labels:
        group = by_label[c]
        keep += [group[i] for i in sorted(rng.choice(len(group), count[c], replace=False))]
    return keep

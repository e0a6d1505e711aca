"""The data of one fit, read once: scanned, audited, split, with its class names and labels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.console import Console
from .audit import AuditReport, audit
from .files import Sample
from .scan import scan
from .split import split, split_summary

__all__ = ["Dataset", "read_data"]


@dataclass(frozen=True)
class Dataset:
    """What a fit learns from: the audit, the three splits and the class names (sorted)."""

    report: AuditReport
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    summary: dict = field(default_factory=dict)  # data.split.split_summary

    @property
    def classes(self) -> list[str]:
        return self.report.classes

    @property
    def parts(self) -> tuple[list[Sample], list[Sample], list[Sample]]:
        return self.train, self.val, self.test

    @property
    def everything(self) -> list[Sample]:
        """train + validation + test, in that order (rows of cached features follow it)."""
        return self.train + self.val + self.test

    def labels(self, samples: list[Sample]) -> np.ndarray:
        """Class indices of `samples` (int64)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[s.label] for s in samples], dtype=np.int64)


def read_data(
    source: str | os.PathLike,
    val_fraction: float,
    seed: int,
    console: Console,
    strict: bool = False,
    memo=None,
    exclude: tuple[Path, ...] = (),
) -> Dataset:
    """Scan `source` (a folder or a CSV), audit every file once (verdicts remembered in `memo`
    by content), and split train / validation / test."""
    report = audit(scan(source, exclude=exclude), console, strict, memo=memo)
    train, val, test = split(report.samples, val_fraction, seed)
    summary = split_summary(report, (train, val, test), val_fraction, seed)
    return Dataset(report, train, val, test, summary)

"""Why the frozen choice misses the test oracle on chest_xray: two validation-side causes,
measured (docs/frozen-choice.md).

    python benchmarks/chest_xray_shift.py [--cache DIR]

1. Patients on both sides of the split. The dataset's file names carry a patient id
   (`person<N>_...`, `IM-<N>-...`); the fit's validation is carved at random per image. Printed:
   how many validation images share a patient with a training image, and every view's head
   (C on validation) scored on validation and test under the random split and under a split
   that keeps each patient on one side (20% of patients per class), with the choice each makes.
2. What differs on test: per view, normal and pneumonia recall and ROC AUC on test.
The test split is only scored here, never used to choose.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from automl_tl.core.console import Console
from automl_tl.data.audit import audit
from automl_tl.data.scan import scan
from automl_tl.data.split import split
from automl_tl.decide.candidates import select_view
from automl_tl.features.cache import FeatureCache
from automl_tl.plugins.manager import get_plugins
from automl_tl.train.logreg import as_float_rows, fit_logreg

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "chest_xray"


def patient(sample) -> str:
    name = sample.path.name
    m = re.match(r"(person\d+)_", name)
    return m.group(1) if m else re.sub(r"-\d+\.jpeg$", "", name)


def grouped_split(samples, fraction: float, seed: int):
    """Whole patients to validation, `fraction` of each class's images, seeded."""
    rng = np.random.default_rng(seed)
    by = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by[s.label][patient(s)].append(s)
    train, val = [], []
    for label in sorted(by):
        ids = sorted(by[label])
        target, got = fraction * sum(len(v) for v in by[label].values()), 0
        for i in rng.permutation(len(ids)):
            group = by[label][ids[i]]
            if got < target:
                val += group
                got += len(group)
            else:
                train += group
    return train, val


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent", file=sys.stderr)
        return 0
    from sklearn.metrics import roc_auc_score

    console = Console(quiet=True)
    cache = Path(args.cache or tempfile.mkdtemp(prefix="chest-shift-"))
    spec = get_plugins().backbone("efficientnet_lite0")
    report = audit(scan(DATA), console)
    classes = report.classes
    train, val, test = split(report.samples, 0.2, 0)
    seen = {patient(s) for s in train}
    shared = sum(patient(s) in seen for s in val)
    print(f"random split: {shared} of {len(val)} validation images share a patient with train")
    gtrain, gval = grouped_split(train + val, 0.2, 0)
    print(f"patient split: {len(gtrain)} / {len(gval)} images")
    features = FeatureCache(spec, spec.build(), cache, console=console)
    features.ensure(train + val + test)
    lab = lambda part: np.array([classes.index(s.label) for s in part])  # noqa: E731
    y_te, r_te = lab(test), features.view_rows(test)
    normal = classes.index("NORMAL")
    views = list(features.views)
    for name, (a, b) in {"random": (train, val), "patient": (gtrain, gval)}.items():
        ya, yb = lab(a), lab(b)
        ra, rb = features.view_rows(a), features.view_rows(b)
        sel = select_view(
            views,
            lambda v, ra=ra, rb=rb: (ra(v.name), rb(v.name)),
            ya,
            yb,
            2,
            "head",
            console,  # noqa: B023
        )
        print(f"{name} split: {sel.reason}")
        print("| view | validation | test | normal recall | pneumonia recall | test ROC AUC |")
        print("|---|---|---|---|---|---|")
        rows = []
        for v in views:
            res = fit_logreg(ra(v.name), ya, rb(v.name), yb, 2)
            with torch.no_grad():
                p = torch.softmax(res.head(as_float_rows(r_te(v.name))), 1).numpy()
            pred = p.argmax(1)
            recall = [float((pred[y_te == k] == k).mean()) for k in (normal, 1 - normal)]
            auc = roc_auc_score(y_te == 1 - normal, p[:, 1 - normal])
            test_acc = float((pred == y_te).mean())
            rows.append((res.val_acc, v.name, test_acc, *recall, auc))
        for acc, view, te, rn, rp, auc in sorted(rows, reverse=True):
            print(f"| {view} | {acc:.4f} | {te:.4f} | {rn:.3f} | {rp:.3f} | {auc:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

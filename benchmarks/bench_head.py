"""Head training on cached features: automl-tl's head (automl_tl.train.logreg: L2 logistic
regression solved by L-BFGS for each C of its grid, strong to weak with warm starts, the best
on validation kept) against a tuned scikit-learn LogisticRegression (lbfgs after
StandardScaler, one fit per C of the same grid, the best on validation kept) on the same
features; time and validation accuracy, side by side. The old stochastic head (train_head,
AdamW with early stopping) is shown too.

The features come from the feature cache (computed once; later runs read them), so only the
head training is timed. Each side runs `--repeats` times, alternating; the best time counts.

    python benchmarks/bench_head.py [--data DIR ...] [--cache-dir DIR] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DEFAULT_DATA = [SHARED / "hymenoptera_data", SHARED / "flowers5", SHARED / "chest_xray"]


def load_features(data: Path, cache_dir: Path | None, stage: str):
    """(rows_train, y_train, rows_val, y_val, classes) from the feature cache."""
    from automl_tl.data.audit import audit
    from automl_tl.data.scan import scan
    from automl_tl.data.split import split
    from automl_tl.features.cache import FeatureCache
    from automl_tl.plugins.manager import get_plugins

    report = audit(scan(data))
    train, val, _ = split(report.samples, 0.2, 0)
    spec = get_plugins().backbone("efficientnet_lite0")
    cache = FeatureCache(spec, spec.build(None), cache_dir)
    rows = cache.rows(train + val, stage)
    y = np.array([report.classes.index(s.label) for s in train + val])
    n = len(train)
    return (
        rows.subset(np.arange(n)),
        y[:n],
        rows.subset(np.arange(n, len(y))),
        y[n:],
        report.classes,
        cache.stats,
    )


def ours(rows_train, y_train, rows_val, y_val, k: int) -> tuple[float, float, str]:
    from automl_tl.train.logreg import fit_logreg

    t = time.perf_counter()
    res = fit_logreg(rows_train, y_train, rows_val, y_val, k)
    seconds = time.perf_counter() - t
    return seconds, res.val_acc, f"C={res.C:g}, {len(res.path)} Cs"


def adamw(rows_train, y_train, rows_val, y_val, k: int) -> tuple[float, float, str]:
    from automl_tl.core.tasks import HeadConfig
    from automl_tl.train.heads import train_head

    t = time.perf_counter()
    res = train_head(rows_train, y_train, rows_val, y_val, k, HeadConfig(batch_size=None))
    seconds = time.perf_counter() - t
    return seconds, res.history[res.best_epoch - 1]["val_acc"], f"{len(res.history)} epochs"


def sklearn_tuned(x_train, y_train, x_val, y_val) -> tuple[float, float, str]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from automl_tl.train.logreg import DEFAULT_CS

    t = time.perf_counter()
    scaler = StandardScaler().fit(x_train)
    zt, zv = scaler.transform(x_train), scaler.transform(x_val)
    best = (-1.0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in DEFAULT_CS:
            model = LogisticRegression(C=C, max_iter=1000, class_weight="balanced")
            acc = float((model.fit(zt, y_train).predict(zv) == y_val).mean())
            best = max(best, (acc, C), key=lambda b: b[0])
    seconds = time.perf_counter() - t
    return seconds, best[0], f"C={best[1]:g}, {len(DEFAULT_CS)} Cs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA)
    ap.add_argument("--cache-dir", type=Path, help="feature cache (default: the user cache)")
    ap.add_argument("--stage", default="head", help="cut point whose features are used")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    table = [
        "| head on cached features | rows x width, classes | automl-tl logreg "
        "| sklearn tuned | speed-up | val acc automl-tl / sklearn | old AdamW head "
        "| target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data in args.data:
        if not data.is_dir():
            print(f"skipped: dataset {data} is absent")
            continue
        print(f"{data.name}: features from the cache ...", flush=True)
        rt, yt, rv, yv, classes, stats = load_features(data, args.cache_dir, args.stage)
        print(f"  cache hits {stats.hits}, computed {stats.computed}", flush=True)
        xt, xv = np.asarray(rt), np.asarray(rv)
        best = {"ours": None, "sk": None, "adamw": None}
        for _ in range(args.repeats):  # alternating; the fastest of each counts
            k = len(classes)
            for name, fn, inputs in (
                ("ours", ours, (rt, yt, rv, yv, k)),
                ("sk", sklearn_tuned, (xt, yt, xv, yv)),
                ("adamw", adamw, (rt, yt, rv, yv, k)),
            ):
                r = fn(*inputs)
                if best[name] is None or r[0] < best[name][0]:
                    best[name] = r
                print(f"  {name}: {r[0]:.3f}s acc {r[1]:.4f} ({r[2]})", flush=True)
        (ta, acc_a, da), (tb, acc_b, db), (tc, acc_c, dc) = best["ours"], best["sk"], best["adamw"]
        table.append(
            f"| {data.name} | {len(yt)} x {xt.shape[1]}, {len(classes)} | {ta:.3f}s ({da}) "
            f"| {tb:.3f}s ({db}) | {tb / ta:.1f}x | {acc_a:.4f} / {acc_b:.4f} "
            f"({100 * (acc_a - acc_b):+.1f} pt) | {acc_c:.4f}, {tc:.3f}s ({dc}) "
            "| faster, within 0.5 pt |"
        )
    print(f"torch threads {torch.get_num_threads()}")
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

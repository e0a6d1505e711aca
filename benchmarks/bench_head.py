"""Head training on cached features: automl-tl's train_head (batches gathered and dequantised
from the fp16 store by the compiled op) against scikit-learn's LogisticRegression (lbfgs,
after StandardScaler) on the same features; time and validation accuracy, side by side.

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
    from automl_tl.data import audit, scan, split
    from automl_tl.features import FeatureCache
    from automl_tl.plugins import get_plugins

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


def ours(rows_train, y_train, rows_val, y_val, k: int) -> tuple[float, float, int]:
    from automl_tl.train import HeadConfig, train_head

    t = time.perf_counter()
    res = train_head(rows_train, y_train, rows_val, y_val, k, HeadConfig(batch_size=None))
    seconds = time.perf_counter() - t
    return seconds, res.history[res.best_epoch - 1]["val_acc"], len(res.history)


def sklearn_lbfgs(x_train, y_train, x_val, y_val) -> tuple[float, float, int]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(x_train, y_train)
    seconds = time.perf_counter() - t
    return seconds, float((model.predict(x_val) == y_val).mean()), int(model[-1].n_iter_[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA)
    ap.add_argument("--cache-dir", type=Path, help="feature cache (default: the user cache)")
    ap.add_argument("--stage", default="head", help="cut point whose features are used")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    table = [
        "| head training on cached features | rows x width, classes | automl-tl (epochs) "
        "| sklearn lbfgs (iterations) | speed-up | val acc automl-tl / sklearn | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for data in args.data:
        if not data.is_dir():
            print(f"skipped: dataset {data} is absent")
            continue
        print(f"{data.name}: features from the cache ...", flush=True)
        rt, yt, rv, yv, classes, stats = load_features(data, args.cache_dir, args.stage)
        print(f"  cache hits {stats.hits}, computed {stats.computed}", flush=True)
        xt, xv = np.asarray(rt), np.asarray(rv)
        best = {"ours": None, "sk": None}
        for _ in range(args.repeats):
            a = ours(rt, yt, rv, yv, len(classes))
            b = sklearn_lbfgs(xt, yt, xv, yv)
            best["ours"] = a if best["ours"] is None or a[0] < best["ours"][0] else best["ours"]
            best["sk"] = b if best["sk"] is None or b[0] < best["sk"][0] else best["sk"]
            print(f"  automl-tl {a[0]:.3f}s acc {a[1]:.4f}; sklearn {b[0]:.3f}s acc {b[1]:.4f}")
        (ta, acc_a, ep), (tb, acc_b, it) = best["ours"], best["sk"]
        table.append(
            f"| {data.name} | {len(yt)} x {xt.shape[1]}, {len(classes)} | {ta:.3f}s ({ep}) "
            f"| {tb:.3f}s ({it}) | {tb / ta:.2f}x | {acc_a:.4f} / {acc_b:.4f} "
            f"({100 * (acc_a - acc_b):+.1f} pt) | >= 5x, within 0.5 pt |"
        )
    print(f"torch threads {torch.get_num_threads()}")
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

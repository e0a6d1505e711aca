"""Mislabelled images found by confident learning, against planted errors.

    python benchmarks/bench_label_issues.py [--datasets flowers5,imagenette_subset]
                                            [--rate 0.05] [--seed 0] [--cache DIR]
                                            [--backbone efficientnet_lite0]
                                            [--beside efficientnet_lite2]

Per dataset: the fit's split (validation carved from train when there is no val/ folder), then
`--rate` of the TRAINING images get a wrong label (another class drawn uniformly; seeded; in
memory, nothing on disk changes). The frozen view is chosen on the noisy labels as a fit would
choose it, out-of-fold probabilities are computed on train + validation (5 folds, the chosen
view's rows, the chosen C), and automl_tl.decide.label_issues flags images. Printed: precision
and recall of the flagged list against the planted errors, the same for cleanlab's
find_label_issues (prune_by_noise_rate, ranked by self-confidence) on the SAME probabilities
when cleanlab is installed (the dev extra), and the accuracy of a linear head
trained on all noisy training images against one trained without the flagged ones. The
validation split is halved: one half chooses C for both heads, the other scores them (no
planted errors there; with a test split, the test split scores them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import SHARED

from automl_tl.core.console import Console
from automl_tl.data.audit import audit
from automl_tl.data.scan import scan
from automl_tl.data.split import split
from automl_tl.decide.candidates import choose_view
from automl_tl.decide.label_issues import find_label_issues, out_of_fold_probabilities
from automl_tl.features.cache import FeatureCache
from automl_tl.features.paired import at_input_of
from automl_tl.plugins.manager import get_plugins
from automl_tl.train.logreg import fit_logreg


def _pr(flagged: np.ndarray, planted: set[int]) -> tuple[float, float]:
    hits = len(set(flagged.tolist()) & planted)
    return hits / max(len(flagged), 1), hits / max(len(planted), 1)


def _acc(head, x, y) -> float:
    with torch.no_grad():
        return float((head(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def run(name, cache, rate: float, seed: int, console: Console, backbone: str, beside=None) -> dict:
    spec = get_plugins().backbone(backbone)
    report = audit(scan(SHARED / name), console)
    train, val, test = split(report.samples, 0.2, seed)
    classes = report.classes
    k = len(classes)
    lab = lambda part: np.array([classes.index(s.label) for s in part])  # noqa: E731
    y_tr, y_va = lab(train), lab(val)
    features = FeatureCache(spec, spec.build(), cache, console=console)
    features.ensure(train + val + test)
    rng = np.random.default_rng(seed)
    planted = rng.choice(len(train), round(rate * len(train)), replace=False)
    noisy = y_tr.copy()
    noisy[planted] = (y_tr[planted] + rng.integers(1, k, len(planted))) % k
    chosen, table, _, _, fit = choose_view(
        features, train, val, noisy, y_va, spec.stages[-1].name, seed, console
    )
    C = fit.C if fit is not None else next(c["C"] for c in table if c["view"] == chosen.name)
    rows = features.rows(train + val, chosen.name).dequantize().numpy()
    view = chosen.name
    if beside:  # a second backbone at the first one's input, its own view chosen there
        other = at_input_of(get_plugins().backbone(beside), spec)
        second = FeatureCache(other, other.build(), cache, console=console)
        second.ensure(train + val + test)
        picked, *_ = choose_view(
            second, train, val, noisy, y_va, other.stages[-1].name, seed, console
        )  # fmt: skip
        extra = second.rows(train + val, picked.name).dequantize().numpy()
        rows = np.concatenate([rows, extra], 1)
        C = fit_logreg(rows[: len(train)], noisy, rows[len(train) :], y_va, k).C
        view = f"{chosen.name} & {beside}:{picked.name}"
    y_all = np.concatenate([noisy, y_va])
    t0 = time.perf_counter()
    probs = out_of_fold_probabilities(rows, y_all, k, C, 5, seed)
    oof_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = find_label_issues(probs, y_all)
    ours_s = time.perf_counter() - t0
    truth = set(planted.tolist())
    out = {"dataset": name, "backbone": backbone, "view": view, "planted": len(planted)}
    out["oof s"] = oof_s
    out["oof accuracy"] = float((probs.argmax(1) == y_all).mean())
    out["ours flagged"] = len(ours)
    out["ours precision"], out["ours recall"] = _pr(ours.index, truth)
    out["ours s"] = ours_s
    # the labels as published have suspects of their own: the same view and C, no planted
    # errors; a flag of the noisy run that was already one of those is not a new false alarm
    clean_probs = out_of_fold_probabilities(rows, np.concatenate([y_tr, y_va]), k, C, 5, seed)
    published = set(find_label_issues(clean_probs, np.concatenate([y_tr, y_va])).index.tolist())
    unplanted = [i for i in ours.index.tolist() if i not in truth]
    out["published suspects"] = len(published)
    out["unplanted flags already suspects"] = sum(i in published for i in unplanted)
    fresh = np.array([i for i in ours.index.tolist() if i in truth or i not in published])
    out["precision without the published suspects"] = _pr(fresh, truth)[0]
    out["precision at the planted count"] = _pr(ours.index[: len(planted)], truth)[0]
    try:
        from cleanlab.filter import find_label_issues as cleanlab_issues

        t0 = time.perf_counter()
        theirs = cleanlab_issues(
            y_all, probs, filter_by="prune_by_noise_rate",
            return_indices_ranked_by="self_confidence",
        )  # fmt: skip
        out["cleanlab s"] = time.perf_counter() - t0
        out["cleanlab flagged"] = len(theirs)
        out["cleanlab precision"], out["cleanlab recall"] = _pr(np.asarray(theirs), truth)
    except ImportError:
        out["cleanlab"] = "not installed"
    # heads with and without the flagged training images: C on half of validation, scored
    # on the other half (or on test)
    half = rng.permutation(len(val))
    choose, score = half[: len(val) // 2], half[len(val) // 2 :]
    x_tr, x_va = rows[: len(train)], rows[len(train) :]
    if test:
        x_sc = features.rows(test, chosen.name).dequantize().numpy()
        if beside:
            x_sc = np.concatenate([x_sc, second.rows(test, picked.name).dequantize().numpy()], 1)
        y_sc, scored = lab(test), "test"
    else:
        x_sc, y_sc, scored = x_va[score], y_va[score], "validation half"
    keep = np.setdiff1d(np.arange(len(train)), ours.index[ours.index < len(train)])
    for arm, idx in (("all", np.arange(len(train))), ("dropped", keep)):
        res = fit_logreg(x_tr[idx], noisy[idx], x_va[choose], y_va[choose], k)
        out[f"acc {arm}"] = _acc(res.head, x_sc, y_sc)
    out["scored on"] = f"{scored} ({len(y_sc)})"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="flowers5,imagenette_subset")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="/tmp/bench_label_issues")
    # the backbone the default fit keeps on the dataset (docs/backbones.md): Lite1 on
    # imagenette_subset, Lite0 on flowers5; one name for every dataset
    ap.add_argument("--backbone", default="efficientnet_lite0")
    # a second backbone beside it, at its input (what the default fit keeps on flowers5)
    ap.add_argument("--beside", default=None)
    args = ap.parse_args()
    console = Console(quiet=True)
    for name in args.datasets.split(","):
        if not (SHARED / name).is_dir():
            print(f"{name}: skipped, {SHARED / name} is absent")
            continue
        r = run(name, args.cache, args.rate, args.seed, console, args.backbone, args.beside)
        print(" | ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                         for k, v in r.items()))  # fmt: skip


if __name__ == "__main__":
    main()

"""Is the automatic frozen choice right? An oracle over every frozen candidate, per dataset.

    python benchmarks/frozen_choice.py [--datasets hymenoptera_data,flowers5,...] [--out FILE]

For each dataset: the fit's own split (validation carved from train when there is no val/
folder, test/ kept apart), the view the fit chooses (automl_tl.decide.candidates.choose_view, on the
validation split), then a head for EVERY view (stage x pooling grid, and the joined view of
the leading stages; C chosen on validation) scored on the test split, or on validation where
the dataset has no test split. Printed per dataset: the chosen view and its score, the best
view on the scoring split (the oracle) and the gap, the best single-stage view; also the
last stage globally pooled (case 1), and a baseline: logistic regression on raw pixels
(images resized to 16x16, grey).
Nothing here chooses on the test split: the oracle column is what a chooser that could see the
test labels would get, the ceiling the real choice is measured against. That ceiling grades
itself (the best of ~24 noisy accuracies on one split), so two more columns say how much of a
gap is the split's noise: the cross-fitted gap (the oracle picked on one half of the scoring
split, scored on the other; mean and 5-95% over 2,000 halvings) and the images only the
oracle gets right against those only the chosen view gets right.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from automl_tl.core.console import Console
from automl_tl.data.audit import audit
from automl_tl.data.scan import scan
from automl_tl.data.split import split
from automl_tl.decide.candidates import choose_view
from automl_tl.features.cache import FeatureCache
from automl_tl.plugins.manager import get_plugins
from automl_tl.train.logreg import fit_logreg

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DEFAULT = "demo-digits,hymenoptera_data,flowers5,chest_xray,mnist"


def _correct(head, rows, y) -> np.ndarray:
    """Per image: does the head get it right (a bool array)."""
    with torch.no_grad():
        x = rows.dequantize() if hasattr(rows, "dequantize") else torch.as_tensor(rows)
        return head(x).argmax(1).numpy() == y


def _accuracy(head, rows, y) -> float:
    return float(_correct(head, rows, y).mean())


def cross_fitted_gap(correct: dict[str, np.ndarray], chosen: str, rounds: int = 2000, seed=0):
    """The gap to an oracle that does not grade itself: on each of `rounds` random halvings of
    the scoring split, the oracle view is the best on one half and both it and the chosen view
    are scored on the other. The in-sample oracle (best of every view on the whole split) is
    the maximum of many noisy accuracies and so biased upwards; this estimate is not.
    Returns (mean gap, 5th percentile, 95th percentile), in points."""
    rng = np.random.default_rng(seed)
    n = len(correct[chosen])
    gaps = np.empty(rounds)
    for r in range(rounds):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2 :]
        oracle = max(correct, key=lambda v: correct[v][a].mean())
        gaps[r] = correct[oracle][b].mean() - correct[chosen][b].mean()
    return tuple(100 * float(x) for x in (gaps.mean(), *np.percentile(gaps, [5, 95])))


def _raw_pixels(samples, size: int = 16) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(samples), size * size), dtype=np.float32)
    for i, s in enumerate(samples):
        with Image.open(s.path) as img:
            out[i] = np.asarray(img.convert("L").resize((size, size)), np.float32).ravel() / 255
    return out


def _dataset(name: str, tmp: Path) -> Path | None:
    if name == "demo-digits":
        from automl_tl.data.demo import write_digits

        return write_digits(tmp / "demo-digits")
    path = SHARED / name
    return path if path.is_dir() else None


def run(name: str, data: Path, cache: Path, seed: int, console: Console) -> dict:
    spec = get_plugins().backbone("efficientnet_lite0")
    report = audit(scan(data), console)
    train, val, test = split(report.samples, 0.2, seed)
    classes = report.classes
    lab = lambda part: np.array([classes.index(s.label) for s in part])  # noqa: E731
    y_tr, y_va, y_te = lab(train), lab(val), lab(test)
    score_part, y_sc, split_name = (test, y_te, "test") if test else (val, y_va, "validation")
    net = spec.build()
    features = FeatureCache(spec, net, cache, console=console)
    t0 = time.perf_counter()
    features.ensure(train + val + test)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen, table, reason, se, _ = choose_view(
        features, train, val, y_tr, y_va, spec.stages[-1].name, seed, console
    )
    choose_s = time.perf_counter() - t0
    r_tr, r_va, r_sc = (features.view_rows(p) for p in (train, val, score_part))
    scores, correct = {}, {}
    # every single view, then the joined candidate the choice measured (the leaders of three
    # stages side by side; its rows are its members' cached rows)
    names = [v.name for v in features.views] + [c["view"] for c in table if "+" in c["view"]]
    for view in names:
        res = fit_logreg(r_tr(view), y_tr, r_va(view), y_va, len(classes))
        correct[view] = _correct(res.head, r_sc(view), y_sc)
        scores[view] = (float(correct[view].mean()), res.val_acc)
    best = max(scores, key=lambda n: scores[n][0])
    single = max((n for n in scores if "+" not in n), key=lambda n: scores[n][0])
    px = fit_logreg(_raw_pixels(train), y_tr, _raw_pixels(val), y_va, len(classes))
    px_score = _accuracy(px.head, _raw_pixels(score_part), y_sc)
    fit_gap, fit_lo, fit_hi = cross_fitted_gap(correct, chosen.name)
    only_oracle = int((correct[best] & ~correct[chosen.name]).sum())
    only_chosen = int((correct[chosen.name] & ~correct[best]).sum())
    bytes_per_image = sum(v.width for v in features.views) * (2 if features.space else 2)
    return {
        "dataset": name,
        "split": f"{len(train)}/{len(val)}/{len(test)}",
        "scored on": split_name,
        "chosen": chosen.name,
        "chosen score": scores[chosen.name][0],
        "oracle": best,
        "oracle score": scores[best][0],
        "gap (pt)": 100 * (scores[best][0] - scores[chosen.name][0]),
        "cross-fitted gap (pt)": f"{fit_gap:.2f} ({fit_lo:.1f} .. {fit_hi:.1f})",
        "right only by oracle / only by chosen": f"{only_oracle} / {only_chosen}",
        "best single view": f"{single} {scores[single][0]:.4f}",
        "case 1": scores[spec.stages[-1].name][0],
        "raw pixels LR": px_score,
        "embed s": embed_s,
        "choose s": choose_s,
        "values/img": bytes_per_image // 2,
        "reason": reason,
        "all": scores,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", default=DEFAULT)
    ap.add_argument("--cache", default=None, help="feature cache folder (default: a temp one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="frozen-choice-"))
    cache = Path(args.cache) if args.cache else tmp / "cache"
    console = Console(quiet=False)
    rows = []
    for name in args.datasets.split(","):
        data = _dataset(name, tmp)
        if data is None:
            print(f"skipped {name}: {SHARED / name} is absent", file=sys.stderr)
            continue
        r = run(name, data, cache, args.seed, console)
        rows.append(r)
        print(f"{name}: {r['reason']}", file=sys.stderr)
        detail = ", ".join(f"{k} {v[0]:.4f}/{v[1]:.4f}" for k, v in r["all"].items())
        print(f"  every view (scored / validation): {detail}", file=sys.stderr)
    cols = ["dataset", "split", "scored on", "chosen", "chosen score", "oracle", "oracle score"]
    cols += ["gap (pt)", "cross-fitted gap (pt)", "right only by oracle / only by chosen"]
    cols += ["best single view", "case 1", "raw pixels LR", "embed s", "choose s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

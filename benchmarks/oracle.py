"""Oracle benchmark: train all four cases with the same budget and compare the planner's choice
with the best of them (regret = best accuracy - accuracy of the auto-selected case).

    python benchmarks/oracle.py [--data DIR] [--per-class 40] [--eval-per-class N]
        [--finetune-epochs 3] [--seed 0] [--out oracle.md]

With --per-class N (default 40; 0 = the dataset as it is) a seeded, stratified subset is built
from symlinks in a temporary folder: N training and M (--eval-per-class, default N) validation
images per class, drawn disjointly from the dataset's training images, and M test images per
class from its held-out folder (test/, else val/; from the same pool when it has neither).
The auto-selected run (case=None) is one of the four: it is run first and reused for its case.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from automl_tl import AutoTransfer
from automl_tl.data.files import expand_paths

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"
CASES = (1, 2, 3, 4)
_HELDOUT = ("test", "val", "valid", "validation")


def _class_files(folder: Path) -> dict[str, list[Path]]:
    return {
        d.name: expand_paths([d])
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def build_subset(src: Path, dest: Path, per_class: int, eval_per_class: int, seed: int) -> dict:
    """Symlink a stratified subset of `src` into dest/{train,val,test}/<class>/; returns counts."""
    subdirs = {d.name.lower(): d for d in src.iterdir() if d.is_dir()}
    pool = _class_files(subdirs["train"]) if "train" in subdirs else _class_files(src)
    held = next((_class_files(subdirs[n]) for n in _HELDOUT if n in subdirs), None)
    rng = np.random.default_rng(seed)
    parts: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    for label, files in pool.items():
        order = [files[i] for i in rng.permutation(len(files))]
        parts["train"][label] = order[:per_class]
        parts["val"][label] = order[per_class : per_class + eval_per_class]
        if held is None:
            parts["test"][label] = order[per_class + eval_per_class :][:eval_per_class]
        elif label in held:
            test = held[label]
            parts["test"][label] = [test[i] for i in rng.permutation(len(test))[:eval_per_class]]
    counts = {}
    for split, by_label in parts.items():
        for label, files in by_label.items():
            folder = dest / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for k, f in enumerate(files):
                (folder / f"{k:04d}_{f.name}").symlink_to(f.resolve())
        counts[split] = sum(len(v) for v in by_label.values())
    return counts


def _half_width(acc: float, n: int) -> float:
    return 1.96 * float(np.sqrt(max(acc * (1 - acc), 1e-12) / max(n, 1)))


def run_case(data: Path, case: int | None, args, runs: Path) -> tuple[dict, object]:
    """Fit once; returns (row, plan)."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    model = AutoTransfer(
        backbone=args.backbone,
        case=case,
        finetune_epochs=args.finetune_epochs,
        finetune=args.finetune,
        time_budget=args.time_budget,
        max_analysis_images=args.max_analysis_images,
        seed=args.seed,
        out=runs / f"case-{case or 'auto'}",
        quiet=not args.verbose,
    ).fit(data)
    wall = time.perf_counter() - t0
    m, plan = model.metrics_, model.plan_
    kept = [n for n in m["notes"] if n.startswith("kept the")]
    row = {
        "case": plan.case,
        "strategy": plan.strategy,
        "cut": plan.cut,
        "val_acc": m["validation"]["accuracy"],
        "val_balanced": m["validation"]["balanced_accuracy"],
        "val_n": m["validation"]["n"],
        "test_acc": m["test"]["accuracy"] if "test" in m else None,
        "test_n": m["test"]["n"] if "test" in m else 0,
        "best_epoch": m["best_epoch"],
        "epochs_run": m["epochs_run"],
        "wall": wall,
        "load": (load + os.getloadavg()[0]) / 2,
        "note": kept[0] if kept else "",
        "warm": m.get("warm_start"),
    }
    return row, plan


def _acc(acc: float | None, n: int) -> str:
    return "-" if acc is None else f"{acc:.3f} ± {_half_width(acc, n):.3f} (n={n})"


def table(rows: dict[int, dict], auto: int) -> str:
    head = [
        "case",
        "strategy",
        "cut",
        "val acc ± 95%",
        "val balanced",
        "test acc ± 95%",
        "best epoch / run",
        "wall s (load)",
        "note",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in sorted(rows):
        r = rows[c]
        cells = [
            f"**{c} (auto)**" if c == auto else str(c),
            r["strategy"],
            r["cut"],
            _acc(r["val_acc"], r["val_n"]),
            f"{r['val_balanced']:.3f}",
            _acc(r["test_acc"], r["test_n"]),
            f"{r['best_epoch']} / {r['epochs_run']}",
            f"{r['wall']:.0f} ({r['load']:.1f})",
            r["note"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def regret_lines(rows: dict[int, dict], auto: int) -> list[str]:
    out = []
    for key, name in (("val_acc", "validation"), ("test_acc", "test")):
        if any(r[key] is None for r in rows.values()):
            continue
        best = max(rows, key=lambda c: rows[c][key])
        regret = rows[best][key] - rows[auto][key]
        out.append(
            f"{name}: best case {best} ({rows[best][key]:.3f}), auto case {auto} "
            f"({rows[auto][key]:.3f}), regret {regret:+.3f}"
        )
    for c, r in sorted(rows.items()):
        warm = r.get("warm")
        if not warm:
            continue
        for key, split in (("val_acc", "validation_accuracy"), ("test_acc", "test_accuracy")):
            if r[key] is None or split not in warm:
                continue
            # metrics.json keeps the warm start's accuracy to 4 decimals: compare at that
            diff = round(r[key], 4) - warm[split]
            verdict = "at or above" if diff >= 0 else "BELOW"
            out.append(
                f"case {c} ({warm['kept']} kept) on {split.split('_')[0]}: {r[key]:.3f} vs the "
                f"frozen '{warm['view']}' it warm-started from {warm[split]:.3f} "
                f"({diff:+.3f}): {verdict}"
            )
    if all(r["test_acc"] is not None for r in rows.values()):
        pick = max(rows, key=lambda c: rows[c]["val_acc"])
        out.append(
            f"test accuracy of the case an oracle picks by validation (case {pick}): "
            f"{rows[pick]['test_acc']:.3f}; of the auto case: {rows[auto]['test_acc']:.3f}"
        )
    return out


def _verdicts(plan) -> str:
    p = plan.profile
    sim = p.get("similarity") or {}
    pv = f", median p-value {sim['median_pvalue']:.3f}" if sim else ""
    return (
        f"size {p['size']} ({p['train_images']} train images vs {p['feature_width']} x "
        f"{p['classes']} head parameters), {p['similar']}{pv}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--per-class", type=int, default=40, help="0: the whole dataset")
    ap.add_argument("--eval-per-class", type=int, help="validation/test images per class")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--finetune", default="auto", choices=["auto", "partial", "full"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--time-budget", type=float, help="passed to every run (seconds)")
    ap.add_argument("--max-analysis-images", type=int, default=2000)
    ap.add_argument("--no-reuse", action="store_true", help="also rerun the auto case forced")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--verbose", action="store_true", help="engine progress on stderr")
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: dataset {args.data} is absent (pass --data DIR)")
        return 0
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="automl-tl-oracle-"))
    try:
        data, header = args.data, f"data {args.data}"
        if args.per_class > 0:
            data = tmp / "data"
            m = args.eval_per_class or args.per_class
            counts = build_subset(args.data, data, args.per_class, m, args.seed)
            header += f", seeded subset (seed {args.seed}): " + ", ".join(
                f"{k} {v}" for k, v in counts.items()
            )
        print(header, flush=True)
        rows: dict[int, dict] = {}
        row, plan = run_case(data, None, args, tmp / "runs")
        auto = plan.case
        rows[auto] = row
        print(f"auto: case {auto} in {row['wall']:.0f}s; {_verdicts(plan)}", flush=True)
        for c in CASES:
            if c in rows and not args.no_reuse:
                continue
            rows[c], _ = run_case(data, c, args, tmp / "runs")
            if c == auto:
                same = all(rows[c][k] == row[k] for k in ("val_acc", "test_acc", "best_epoch"))
                print(f"case {c} forced vs auto: identical accuracies and best epoch: {same}")
            print(f"case {c}: val {rows[c]['val_acc']:.3f} in {rows[c]['wall']:.0f}s", flush=True)
        md = "\n\n".join(
            [
                f"`{shlex.join(['python', *sys.argv])}`",
                f"{header}; backbone {args.backbone}, finetune_epochs {args.finetune_epochs}, "
                f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs",
                f"auto-selected: case {auto} ({_verdicts(plan)})",
                table(rows, auto),
                "\n".join(f"- {line}" for line in regret_lines(rows, auto)),
                f"total wall time {time.perf_counter() - t_all:.0f}s "
                + (
                    f"(case {auto} was also run forced; its row is the forced run)"
                    if args.no_reuse
                    else "(the auto run is reused as its case's row)"
                ),
            ]
        )
        print(md)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(md + "\n")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

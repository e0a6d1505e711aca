"""Warm-started full fine-tuning under each training augmentation, on one dataset.

    python benchmarks/warm_augment.py --data DIR [--per-class N --val-per-class M]
        [--epochs 2] [--policies none,standard,gentle] [--cache C]

For each policy a fit with `AutoTransfer(case=3, finetune="full")`: the frozen choice, its
warm start (refitted at the fine-tuning input when that is smaller), then `--epochs` epochs
of full fine-tuning with train.tune.warm_config, whose augmentation is replaced by the policy
("none": no augmentation; the others: data.augment.AUGMENTS). Printed per policy: the warm
start's validation accuracy and, per epoch, training loss and validation accuracy. With
--per-class, DIR/train/<class>/ is cut to the first N images per class and the next M are
the validation folder (symlinks in a temporary folder); otherwise DIR is used as it is.
Validation only: nothing here reads a test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path


def subset(src: Path, dst: Path, n_train: int, n_val: int) -> Path:
    from automl_tl.data.files import expand_paths

    for cls in sorted(d for d in (src / "train").iterdir() if d.is_dir()):
        files = sorted(expand_paths([cls]))
        for part, chunk in (("train", files[:n_train]), ("val", files[n_train : n_train + n_val])):
            folder = dst / part / cls.name
            folder.mkdir(parents=True, exist_ok=True)
            for f in chunk:
                (folder / f.name).symlink_to(f)
    return dst


def run(data: Path, policy: str, epochs: int, cache: Path, out: Path) -> dict:
    import automl_tl.train.tune as lpft
    from automl_tl import AutoTransfer

    base = lpft.warm_config

    def config(c):
        c = base(c)
        if policy == "none":
            return dataclasses.replace(c, augment=False)
        return dataclasses.replace(c, augment=True, augment_policy=policy)

    lpft.warm_config = config
    try:
        est = AutoTransfer(
            case=3,
            finetune="full",
            finetune_epochs=epochs,
            cache_dir=cache,
            out=out / policy,
            overwrite=True,
            quiet=False,
        ).fit(data)
    finally:
        lpft.warm_config = base
    warm = next((r for r in est.plan_.reasons if r.startswith("warm start")), "")
    return {
        "policy": policy,
        "warm start": warm,
        "epochs": [
            {k: round(h[k], 4) for k in ("epoch", "train_loss", "val_acc")} for h in est.history_
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--per-class", type=int, default=0)
    ap.add_argument("--val-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--policies", default="none,standard,gentle")
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="warm-augment-"))
    data = Path(args.data)
    if args.per_class:
        data = subset(data, tmp / "data", args.per_class, args.val_per_class)
    cache = Path(args.cache) if args.cache else tmp / "cache"
    for policy in args.policies.split(","):
        r = run(data, policy, args.epochs, cache, tmp / "runs")
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The default fit (--backbone auto) against the same command with --backbone efficientnet_lite0,
each from its own cold feature cache, on real datasets with an untouched test split:

    python benchmarks/bench_backbones.py [--data imagenette_subset,flowers5,hymenoptera_data]

Test splits: imagenette_subset and hymenoptera_data's published val/ folders become test/
(the fit then carves its validation split from train/); flowers5 has no split, so a seeded 20%
of each class is held out as test/. The folders are symlink trees under --work; the datasets
are never copied. Printed per dataset: each fit's test accuracy with its standard error, the
backbone it kept, its wall seconds against the time budget, its peak resident memory, and the
backbones the search tried. The table in docs/backbones.md comes from this script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from common import SHARED, cli, load_average

IMAGE = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def _link_tree(pairs, root: Path) -> None:
    for src, split, label in pairs:
        dst = root / split / label / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, dst)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE)


def held_out_tree(name: str, root: Path, seed: int = 0) -> Path:
    """A train/ + test/ symlink tree of dataset `name` under `root`."""
    src = SHARED / name
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    pairs = []
    if (src / "val").is_dir():  # published split: its val/ is the untouched test
        for split, to in (("train", "train"), ("val", "test")):
            for cdir in sorted(p for p in (src / split).iterdir() if p.is_dir()):
                pairs += [(f, to, cdir.name) for f in _images(cdir)]
    else:  # no split: a seeded 20% of each class
        rng = random.Random(seed)
        for cdir in sorted(p for p in src.iterdir() if p.is_dir()):
            files = _images(cdir)
            rng.shuffle(files)
            k = round(0.2 * len(files))
            pairs += [(f, "test", cdir.name) for f in files[:k]]
            pairs += [(f, "train", cdir.name) for f in files[k:]]
    _link_tree(pairs, out)
    return out


def fit(data: Path, work: Path, tag: str, extra: list[str], cache_of: str | None = None) -> dict:
    """One fit from a cold cache of its own (or, with `cache_of`, in that fit's cache: its
    rows are reused, so only its accuracy is worth reading)."""
    out, cache = work / f"run-{data.name}-{tag}", work / f"cache-{data.name}-{cache_of or tag}"
    for p in (out,) if cache_of else (out, cache):
        if p.exists():
            shutil.rmtree(p)
    cmd = ["/usr/bin/time", "-f", "PEAK_KB %M", *cli(), "fit", str(data), "--out", str(out),
           "--cache-dir", str(cache), "--quiet", *extra]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{tag} fit of {data} failed:\n{done.stderr[-3000:]}")
    peak = next(int(x.split()[1]) for x in done.stderr.splitlines() if x.startswith("PEAK_KB"))
    metrics = json.loads((out / "metrics.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    split = "test" if "test" in metrics else "validation"
    acc, n = metrics[split]["accuracy"], metrics[split]["n"]
    return {
        "split": split,
        "acc": acc,
        "n": n,
        "se": math.sqrt(max(acc * (1 - acc), 1 / n) / n),
        "backbone": " + ".join(
            [plan["backbone"], *filter(None, [plan.get("paired", {}).get("backbone")])]
        ),
        "view": plan.get("view", ""),
        "case": plan["case"],
        "seconds": seconds,
        "budget": (plan.get("time_budget") or {}).get("seconds", 1200),
        "peak_gb": peak / 1024**2,
        "tried": plan.get("backbones", []),
        "val": metrics["validation"]["accuracy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="imagenette_subset,flowers5,hymenoptera_data")
    ap.add_argument("--work", default="/tmp/bench_backbones")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_average()}")
    rows = []
    for name in args.data.split(","):
        if not (SHARED / name).is_dir():
            print(f"skip {name}: {SHARED / name} is absent")
            continue
        tree = held_out_tree(name, work / "trees")
        lite0 = fit(tree, work, "lite0", ["--backbone", "efficientnet_lite0"])
        auto = fit(tree, work, "auto", [])
        # the alternatives the search did not keep, each fitted as a user naming it would
        # (in the auto fit's cache: rows reused), for their test accuracy; when a pair was
        # kept, its first backbone alone is one of them (a named backbone is never paired)
        others = {}
        paired = " + " in auto["backbone"]
        for t in auto["tried"]:
            if " + " in t["backbone"] or t["backbone"] == "efficientnet_lite0":
                continue
            if t["status"] in ("measured", "skipped") or (paired and t["status"] == "chosen"):
                others[t["backbone"]] = fit(
                    tree, work, t["backbone"], ["--backbone", t["backbone"]], cache_of="auto"
                )
        rows.append((name, lite0, auto, others))
        for tag, r in (("lite0", lite0), ("auto", auto)):
            print(
                f"{name} {tag}: {r['split']} {r['acc']:.4f} +- {r['se']:.4f} (n {r['n']}), "
                f"validation {r['val']:.4f}, {r['backbone']} {r['view']} case {r['case']}, "
                f"{r['seconds']:.0f} s of a {r['budget']:.0f} s budget, peak {r['peak_gb']:.2f} GB"
            )
        for t in auto["tried"]:
            print(
                f"    {t['backbone']}: {t['status']}, cross-fitted {t.get('cv_acc')}, "
                f"validation {t['val_acc']}, view "
                f"{t['view']}, embedding {t['embed_seconds']} s at {t['images_per_second']} img/s, "
                f"choice {t['choice_seconds']} s, estimate {t['estimate_seconds']} {t['reason']}"
            )
        for bb, r in others.items():
            print(
                f"    named {bb}: {r['split']} {r['acc']:.4f} +- {r['se']:.4f}, validation "
                f"{r['val']:.4f}, {r['view']} case {r['case']} (not kept by the search)"
            )
        print(f"    load average: {load_average()}", flush=True)
    print(
        "\n| data | split (n) | Lite0 | default | default's backbone | difference / SE | "
        "the others, named | seconds Lite0 / default (budget) | peak GB Lite0 / default |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, a, b, others in rows:
        diff = b["acc"] - a["acc"]
        named = ", ".join(f"{k.split('_')[-1]} {r['acc']:.4f}" for k, r in others.items())
        print(
            f"| {name} | {a['split']} ({a['n']}) | {a['acc']:.4f} | {b['acc']:.4f} | "
            f"{b['backbone']} | {diff:+.4f} / {a['se']:.4f} | {named or '-'} | "
            f"{a['seconds']:.0f} / {b['seconds']:.0f} ({b['budget']:.0f}) | "
            f"{a['peak_gb']:.2f} / {b['peak_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()

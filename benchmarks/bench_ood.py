"""Does the exported model know when it does not know? Calibration and the OOD flag, measured.

    python benchmarks/bench_ood.py [--models hymenoptera_data,flowers5] [--n 200] [--work DIR]

For each model: a default `automl-tl fit` of the dataset (kept in --work and reused when its
run folder exists), then, from metrics.json, the expected calibration error (15 bins) and NLL
before and after temperature scaling (on validation, where the temperature was fitted, and
cross-fitted: fitted on one half of validation, measured on the other; on test too when the
dataset has one); then the share of images the exported model flags as out of distribution
(`automl-tl predict --json`, onnxruntime only): its own validation images (the held-out set
the p-values are counted against, so at most 5% by construction), the cross-fitted share
(p-values counted against the other half), its own test images when it has a test split, and
`--n` images (a fixed, evenly spaced selection) from each of the other datasets.
Nothing here chooses anything; the threshold (5%) is the engine's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from common import SHARED, cli

from automl_tl.core.console import Console
from automl_tl.data.dataset import read_data

CLI = cli()[0]
SUFFIXES = {".jpg", ".jpeg", ".png"}
OTHERS = {  # where each dataset's held-out images live
    "hymenoptera_data": "val",
    "flowers5": "",
    "chest_xray": "test",
    "mnist": "test",
    "imagenette_subset": "val",
    "imagenet_sample": "",
}


def images(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    step = max(1, len(files) // n)
    return files[::step][:n]


def flagged(run: Path, paths: list[Path]) -> tuple[float, int]:
    out = subprocess.run(
        [CLI, "predict", str(run), *map(str, paths), "--json"], capture_output=True, text=True
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in rows if "error" not in r]
    return sum(r["ood"] for r in rows) / max(len(rows), 1), len(rows)


def fit(name: str, work: Path) -> Path:
    run = work / f"run-{name}"
    if not (run / "model.onnx").is_file():
        cmd = [CLI, "fit", str(SHARED / name), "--out", str(run), "--cache-dir", str(work / "c")]
        subprocess.run(cmd + ["--quiet"], check=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="hymenoptera_data,flowers5")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--work", default="/tmp/bench_ood")
    args = ap.parse_args()
    work = Path(args.work)
    for name in args.models.split(","):
        if not (SHARED / name).is_dir():
            print(f"{name}: skipped, {SHARED / name} is absent")
            continue
        run = fit(name, work)
        m = json.loads((run / "metrics.json").read_text())
        cal, ood = m["calibration"], m["ood"]
        case = json.loads((run / "plan.json").read_text())["case"]
        acc = m["validation"]["accuracy"]
        print(f"\n## {name}: case {case}, validation accuracy {acc:.4f}, T = {cal['temperature']}")
        print("| split | n | ECE before | ECE after | NLL before | NLL after |")
        print("|---|---|---|---|---|---|")
        v = cal["validation"]
        c = v["cross_fitted_after"]
        print(f"| validation (T fitted here) | {v['n']} | {v['before']['ece']} | "
              f"{v['after']['ece']} | {v['before']['nll']} | {v['after']['nll']} |")  # fmt: skip
        print(f"| validation, cross-fitted | {v['n']} | {v['before']['ece']} | {c['ece']} | "
              f"{v['before']['nll']} | {c['nll']} |")  # fmt: skip
        if "test" in cal:
            t = cal["test"]
            print(f"| test | {t['n']} | {t['before']['ece']} | {t['after']['ece']} | "
                  f"{t['before']['nll']} | {t['after']['nll']} |")  # fmt: skip
        print("\n| images | n | flagged OOD |")
        print("|---|---|---|")
        # the fit's own validation split, read the way the fit read it (default fraction, seed)
        data = read_data(SHARED / name, 0.2, 0, Console(True))
        val = [Path(x.path) for x in data.val]
        if val:
            share, n = flagged(run, val)
            print(f"| own validation (the held-out set) | {n} | {share:.1%} |")
        print(f"| own validation, cross-fitted | {m['validation']['n']} | "
              f"{ood['validation_flagged_cross_fitted']:.1%} |")  # fmt: skip
        if "test_flagged" in ood:
            print(f"| own test | {ood['test_images']} | {ood['test_flagged']:.1%} |")
        for other, sub in OTHERS.items():
            if other == name or not (SHARED / other).is_dir():
                continue
            share, n = flagged(run, images(SHARED / other / sub, args.n))
            print(f"| {other} | {n} | {share:.1%} |")
        for line in m.get("shift", []):
            print(f"shift: {line}")


if __name__ == "__main__":
    main()

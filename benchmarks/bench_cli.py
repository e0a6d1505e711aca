"""How fast the CLI answers, side by side with `python -c "import torch"` on this machine.

    python benchmarks/bench_cli.py [--markdown FILE] [--runs 5] [--fits 3]

Measures, each command in a fresh process (wall time, medians):
  - `python -c "import torch"` (the floor any command that trains pays),
  - `automl-tl --help` (target: <= 1.0 s),
  - `automl-tl predict` on 8 images (onnxruntime only; should stay well under a second),
  - a warm re-fit of hymenoptera_data: one cold fit fills a temporary feature cache, then
    every re-fit (a new --out each time) reads all features from it (target: at most
    1.5 s above `import torch`).
hymenoptera_data comes from /work/shared/datasets (found like tests/conftest.py does); when
it is absent the fits are skipped with the reason and predict uses a small digits model.
The machine's load average is printed beside the numbers: on a shared machine they move.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cli as automl_tl_command
from common import load_average

HERE = Path(__file__).resolve().parent
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
HELP_TARGET, WARM_TARGET = 1.0, 1.5


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
    """Wall seconds of one run (fails loudly: a broken command is not a fast one)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stdout


def _median(cmd: list[str], env: dict, runs: int) -> float:
    return statistics.median(_timed(cmd, env)[0] for _ in range(runs))


def _images(folder: Path, n: int) -> list[str]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [str(p) for p in files[:n]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    ap.add_argument("--runs", type=int, default=5, help="runs of import torch and --help")
    ap.add_argument("--fits", type=int, default=3, help="warm re-fits")
    args = ap.parse_args()
    cli = automl_tl_command()
    rows: list[tuple[str, str]] = []
    met: list[bool] = []
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "AUTOML_TL_CACHE_DIR": str(tmp / "cache")}
        torch_s = _median([sys.executable, "-c", "import torch"], env, args.runs)
        rows.append((f'`python -c "import torch"` (median of {args.runs})', f"{torch_s:.2f} s"))
        help_s = _median([*cli, "--help"], env, args.runs)
        met.append(help_s <= HELP_TARGET)
        rows.append(
            (
                f"`automl-tl --help` (median of {args.runs}; target <= {HELP_TARGET:.1f} s)",
                f"{help_s:.2f} s ({'met' if met[-1] else 'NOT met'})",
            )
        )
        data = DATASETS / "hymenoptera_data"
        fit = [*cli, "fit", str(data), "--cache-dir", str(tmp / "cache"), "--quiet", "--json"]
        model = None
        if data.is_dir():
            cold_s, out = _timed([*fit, "--out", str(tmp / "cold")], env)
            model = json.loads(out)["model"]
            rows.append(("cold fit of hymenoptera_data (fills the cache; once)", f"{cold_s:.1f} s"))
            warm, fit_seconds = [], []
            for i in range(args.fits):
                seconds, out = _timed([*fit, "--out", str(tmp / f"warm{i}")], env)
                summary = json.loads(out)
                if summary["feature_cache"]["computed"] != 0:
                    raise SystemExit(f"re-fit {i} computed features: the cache was not warm")
                warm.append(seconds)
                fit_seconds.append(summary["fit_seconds"])
            warm_s = statistics.median(warm)
            met.append(warm_s - torch_s <= WARM_TARGET)
            rows.append(
                (
                    f"warm re-fit of hymenoptera_data, wall (median of {args.fits})",
                    f"{warm_s:.2f} s (fit_seconds inside: {statistics.median(fit_seconds):.2f} s)",
                )
            )
            rows.append(
                (
                    f"warm re-fit minus import torch (target <= {WARM_TARGET:.1f} s)",
                    f"{warm_s - torch_s:+.2f} s ({'met' if met[-1] else 'NOT met'})",
                )
            )
            images = _images(data / "val", 8)
        else:
            rows.append(("warm re-fit of hymenoptera_data", f"skipped: {data} is absent"))
            from automl_tl.data.demo import write_digits

            digits = write_digits(tmp / "digits", per_class=16, digits=(0, 1, 7))
            _, out = _timed(
                [*cli, "fit", str(digits), "--out", str(tmp / "d"), "-q", "--json"], env
            )
            model = json.loads(out)["model"]
            images = _images(Path(digits), 8)
        predict_s = _median([*cli, "predict", model, *images], env, 3)
        rows.append(
            (
                f"`automl-tl predict` on {len(images)} images (median of 3)",
                f"{predict_s:.2f} s ({predict_s - torch_s:+.2f} s vs import torch)",
            )
        )
    load_end = load_average()
    rows.append(("load average at start / at end (1, 5, 15 min)", f"{load_start}; {load_end}"))
    head = (
        f"automl-tl CLI wall times on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
        f"targets {'all met' if all(met) else 'NOT all met'}"
    )
    width = max(len(r[0]) for r in rows)
    print(head)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    if args.markdown:
        table = ["| measurement | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
        args.markdown.write_text("\n".join([head, "", *table]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

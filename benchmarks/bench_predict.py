"""Prediction from Python as fast as from the CLI: images per second, side by side.

    python benchmarks/bench_predict.py [--data hymenoptera_data] [--repeats 3] [--work DIR]

Fits AutoTransfer on the dataset (a warm cache after the first run), then on the same image
files: `automl-tl predict RUN FILES` (a fresh process each time, as a user runs it: its
start-up is counted), `AutoTransfer.predict(files)` and `AutoTransfer.score(folder)` in this
process. Median of --repeats wall times; the issue's target is Python within 1.5x of the CLI.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import SHARED, cli

from automl_tl import AutoTransfer
from automl_tl.data.files import expand_paths

CLI = cli()[0]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="hymenoptera_data")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="/tmp/bench_predict")
    args = ap.parse_args()
    data = SHARED / args.data
    if not data.is_dir():
        sys.exit(f"skipped: {data} is absent")
    work = Path(args.work)
    model = AutoTransfer(out=work / "run", cache_dir=work / "cache", overwrite=True, quiet=True)
    model.fit(data)
    rows = []
    for name, folder in (("validation", data / "val"), ("all", data)):
        files = [str(f) for f in expand_paths([folder])]
        n = len(files)

        def cli(files=files):
            subprocess.run([CLI, "predict", str(model.run_dir_), *files], check=True,
                           capture_output=True)  # fmt: skip

        t_cli = timed(cli, args.repeats)
        t_predict = timed(lambda files=files: model.predict(files), args.repeats)
        t_score = timed(lambda folder=folder: model.score(folder), args.repeats)
        rows.append((name, n, n / t_cli, n / t_predict, n / t_score))
    print("| images | n | automl-tl predict img/s | AutoTransfer.predict img/s | score img/s | "
          "predict / CLI | score / CLI |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, n, c, p, s in rows:
        print(f"| {args.data} {name} | {n} | {c:.1f} | {p:.1f} | {s:.1f} | {p / c:.2f}x | "
              f"{s / c:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Embedding throughput: the full embed() pipeline (decode + preprocess + forward, overlapped)
against the bare backbone forward on the same, already decoded batches. Prints the ratio.

    python benchmarks/bench_embed.py [--images 256] [--batch-size 32] [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from automl_tl.backbone import FeatureExtractor
from automl_tl.embed import embed, iter_batches
from automl_tl.inference import expand_paths
from automl_tl.plugins import get_plugins

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: dataset {args.data} is absent (pass --data DIR)")
        return 0
    files = expand_paths([args.data])[: args.images]
    spec = get_plugins().backbone(args.backbone)
    fx = FeatureExtractor(spec.build(None), spec.preprocessing, len(spec.stages) - 1).eval()
    fx = fx.to(memory_format=torch.channels_last)

    # Bare forward: decode everything first, then time the forward passes alone.
    batches = [
        torch.from_numpy(b).contiguous(memory_format=torch.channels_last)
        for b in iter_batches(files, spec.preprocessing, args.batch_size)
    ]
    with torch.inference_mode():
        fx.stage_features(batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            fx.stage_features(b)
        bare = len(files) / (time.perf_counter() - t0)

    embed(fx, files[: args.batch_size], spec.preprocessing, args.batch_size)  # warm-up
    t0 = time.perf_counter()
    embed(fx, files, spec.preprocessing, args.batch_size)
    full = len(files) / (time.perf_counter() - t0)

    print(
        f"backbone: {spec.name}, {len(files)} images from {args.data}, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    print(f"bare backbone forward (pre-decoded) : {bare:7.1f} img/s")
    print(f"embed() from files (decode+forward): {full:7.1f} img/s")
    print(f"ratio embed/bare                   : {full / bare:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

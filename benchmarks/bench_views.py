"""What the pooled grids cost: the embedding graph with every view (stage x 1x1/2x2/4x4 grid)
against the old one (every stage globally pooled), side by side on the same decoded images.

    python benchmarks/bench_views.py [--data DIR] [--images 128] [--rounds 3]

Prints images/s of both onnxruntime graphs (the forward pass the embed step runs), their ratio,
and the cache's bytes per image for both (fp16 rows: 2 bytes per value).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from automl_tl.data.batches import iter_batches
from automl_tl.data.files import expand_paths
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.features.runners import make_runner
from automl_tl.features.stage_graph import export_stages
from automl_tl.features.views import frozen_views
from automl_tl.plugins.manager import get_plugins

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"skipped: {args.data} is absent")
        return 0
    spec = get_plugins().backbone("efficientnet_lite0")
    net = spec.build()
    last = len(spec.stages) - 1
    views = frozen_views(spec)
    prep = spec.preprocessing
    graphs = {
        "stages pooled (before)": FeatureExtractor(net, prep, last),
        "every view (now)": FeatureExtractor(
            net, prep, last, views=[(v.stage_index, v.grid) for v in views]
        ),
    }
    files = expand_paths([args.data])[: args.images]
    batches = list(iter_batches(files, prep, args.batch))
    tmp = Path(tempfile.mkdtemp(prefix="bench-views-"))
    runners = {}
    for name, ext in graphs.items():
        export_stages(ext.eval(), tmp / f"{len(runners)}.onnx", prep.crop_size)
        runners[name] = make_runner(ext, prep.crop_size, "onnxruntime", tmp, key=str(len(runners)))
    best = {name: 0.0 for name in runners}
    for _ in range(args.rounds):  # alternate, so a load change hits both
        for name, runner in runners.items():
            t0 = time.perf_counter()
            for x in batches:
                runner.run(x)
            best[name] = max(best[name], len(files) / (time.perf_counter() - t0))
    widths = {
        "stages pooled (before)": sum(s.width for s in spec.stages),
        "every view (now)": sum(v.width for v in views),
    }
    print(f"{len(files)} images from {args.data}, batch {args.batch}, best of {args.rounds}")
    print("| graph | outputs | values per image | cache bytes per image (fp16) | img/s |")
    print("|---|---|---|---|---|")
    for name in runners:
        outs = len(graphs[name].views)
        print(f"| {name} | {outs} | {widths[name]} | {2 * widths[name]} | {best[name]:.1f} |")
    before, now = best["stages pooled (before)"], best["every view (now)"]
    print(f"\nembedding time now / before: {before / now:.3f} (target <= 1.25)")
    return 0 if np.isfinite(before / now) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run in a subprocess by tests/test_features.py: fill a feature cache for a folder of images
through FeatureCache.ensure (real backbone, onnxruntime engine) and print what it did.

    python -m tests.features_script DATA CACHE_DIR [--chunk N] [--engine E]
"""

from __future__ import annotations

import argparse
import json

from automl_tl.data.audit import audit
from automl_tl.data.scan import scan
from automl_tl.features.cache import FeatureCache
from automl_tl.plugins.manager import get_plugins


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("cache_dir")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--engine", default="auto")
    args = ap.parse_args()
    samples = audit(scan(args.data)).samples
    spec = get_plugins().backbone("efficientnet_lite0")
    cache = FeatureCache(
        spec, spec.build(None), args.cache_dir, engine=args.engine, batch_size=4, chunk=args.chunk
    )
    print("ready", flush=True)
    cache.ensure(samples)
    print(json.dumps(cache.stats.to_dict()), flush=True)


if __name__ == "__main__":
    main()

"""Embedding throughput, measured side by side in one run (rounds alternate, medians shown):

(a) bare backbone forward in onnxruntime on pre-decoded batches,
(b) embed() from files with the onnxruntime engine (decode + forward overlapped), b/a,
(c) bare torch eager channels_last forward, and the onnxruntime/torch ratio,
(d) decoding (thread pool, as embed() runs it): PIL `load_for_model` vs torchvision.io,
(e) train/serve skew on real datasets: pixels and features of the torchvision.io decoder
    against the PIL decoder that the exported model's inference uses.

Other processes on the machine skew single measurements; the ratios are medians of
per-round ratios, each pair measured back to back.

    python benchmarks/bench_embed.py [--images 256] [--batch-size N] [--rounds 3]
        [--skew-images 200] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from automl_tl.core.machine import available_cores, pick_batch_size
from automl_tl.data.batches import iter_batches
from automl_tl.data.decode import jpeg_info, load_image, uses_torchvision
from automl_tl.data.files import expand_paths
from automl_tl.features.embed import embed
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.features.runners import TorchRunner, make_runner
from automl_tl.plugins.manager import get_plugins

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SKEW_SETS = ("hymenoptera_data", "flowers5", "chest_xray")


def _rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def throughput(files, spec, batch_size, rounds, model_dir) -> list[tuple[str, str]]:
    prep = spec.preprocessing
    fx = FeatureExtractor(spec.build(None), prep, len(spec.stages) - 1).eval()
    ort_runner = make_runner(fx, prep.crop_size, "onnxruntime", model_dir)
    torch_fx = FeatureExtractor(spec.build(None), prep, len(spec.stages) - 1)
    torch_runner = TorchRunner(torch_fx, "cpu")
    batches = list(iter_batches(files, prep, batch_size, loader=load_image))
    for run in (ort_runner.run, torch_runner.run):
        run(batches[0])  # warm-up
    embed(fx, files[:batch_size], prep, batch_size, engine="onnxruntime", model_dir=model_dir)
    n = len(files)
    rates: dict[str, list[float]] = {k: [] for k in "a b c pil tv".split()}
    for _ in range(rounds):  # alternate, so load from other processes hits all alike
        rates["a"].append(_rate(n, lambda: [ort_runner.run(b) for b in batches]))
        rates["b"].append(
            _rate(n, lambda: embed(fx, files, prep, batch_size, None, "onnxruntime", model_dir))
        )
        rates["c"].append(_rate(n, lambda: [torch_runner.run(b) for b in batches]))
        rates["pil"].append(_rate(n, lambda: list(iter_batches(files, prep, batch_size))))
        rates["tv"].append(
            _rate(n, lambda: list(iter_batches(files, prep, batch_size, loader=load_image)))
        )
    m = {k: statistics.median(v) for k, v in rates.items()}

    def ratio(x: str, y: str) -> float:  # median of per-round ratios (pairs ran back to back)
        return statistics.median(p / q for p, q in zip(rates[x], rates[y], strict=True))

    return [
        ("(a) bare forward, onnxruntime, pre-decoded", f"{m['a']:.1f} img/s"),
        ("(b) embed() from files, onnxruntime engine", f"{m['b']:.1f} img/s"),
        ("(b)/(a) pipeline efficiency (target >= 0.85)", f"{ratio('b', 'a'):.2f}"),
        ("(c) bare forward, torch eager channels_last", f"{m['c']:.1f} img/s"),
        ("(a)/(c) onnxruntime speed-up over torch", f"{ratio('a', 'c'):.2f}x"),
        ("(d) decode, PIL load_for_model (thread pool)", f"{m['pil']:.1f} img/s"),
        ("(d) decode, torchvision.io load_image (thread pool)", f"{m['tv']:.1f} img/s"),
        ("(d) decode speed-up torchvision/PIL", f"{ratio('tv', 'pil'):.2f}x"),
    ]


def skew(spec, per_set: int, model_dir) -> list[tuple[str, str]]:
    """Pixel difference and feature cosine, torchvision.io decoder vs the PIL decoder."""
    prep = spec.preprocessing
    fx = FeatureExtractor(spec.build(None), prep, len(spec.stages) - 1)
    runner = make_runner(fx, prep.crop_size, "onnxruntime", model_dir)
    rows = []
    for name in SKEW_SETS:
        if not (SHARED / name).is_dir():
            rows.append((f"(e) {name}", "skipped: dataset absent"))
            continue
        files = expand_paths([SHARED / name])
        files = [files[i] for i in np.linspace(0, len(files) - 1, per_set).astype(int)]
        files = [f for f in files if f.suffix.lower() in (".jpg", ".jpeg")]
        routed = sum(uses_torchvision(jpeg_info(f.read_bytes()[:65536]), prep) for f in files)
        pil = np.concatenate(list(iter_batches(files, prep, 32)))
        tv = np.concatenate(list(iter_batches(files, prep, 32, loader=load_image)))
        pix = np.abs(pil - tv) * 255.0
        fp, ft = runner.run(pil)[-1], runner.run(tv)[-1]
        cos = (fp * ft).sum(1) / (np.linalg.norm(fp, axis=1) * np.linalg.norm(ft, axis=1))
        rows.append(
            (
                f"(e) {name}: {len(files)} JPEGs, {routed} via torchvision",
                f"pixel |diff| mean {pix.mean():.4f} max {pix.max():.0f} (0-255); "
                f"feature cosine mean {cos.mean():.6f} min {cos.min():.6f}",
            )
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "hymenoptera_data")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=None, help="default: embed()'s choice")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skew-images", type=int, default=200, help="per dataset; 0 skips (e)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--markdown", type=Path, help="also write the rows as a markdown table")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: dataset {args.data} is absent (pass --data DIR)")
        return 0
    files = expand_paths([args.data])[: args.images]
    spec = get_plugins().backbone(args.backbone)
    batch = pick_batch_size(spec.preprocessing.crop_size, args.batch_size, n_images=len(files))
    head = (
        f"{spec.name}, {len(files)} images from {args.data.name}, batch {batch}, "
        f"{available_cores()} cores, torch threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds (medians), load average at start {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as model_dir:
        rows = throughput(files, spec, batch, args.rounds, model_dir)
        if args.skew_images:
            rows += skew(spec, args.skew_images, model_dir)
    print(head)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}} : {v}")
    if args.markdown:
        table = [f"{head}\n", "| measurement | result |", "|---|---|"]
        table += [f"| {k} | {v} |" for k, v in rows]
        args.markdown.write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

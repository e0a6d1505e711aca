"""Case-1 fit on hymenoptera: automl-tl (cold cache, then warm) against a tutorial-style
loop that runs the frozen backbone on every epoch; plus the exported model in onnxruntime
against torch eager. Same backbone (EfficientNet-Lite0, ImageNet weights), same head epochs.

The tutorial loop follows PyTorch's "ConvNet as fixed feature extractor" recipe: ImageFolder +
DataLoader, RandomResizedCrop/flip for training, resize/centre-crop for validation, SGD with
momentum 0.9, lr 1e-3, StepLR(7, 0.1), best validation epoch kept. The backbone runs in eval
mode (its BatchNorm statistics stay the pretrained ones) and without gradients.

    python benchmarks/bench_fit.py [--epochs 25] [--data DIR] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"


def tutorial_loop(data: Path, epochs: int, batch_size: int, workers: int) -> dict:
    """Frozen backbone + new linear layer, the backbone re-run on every image of every epoch."""
    from torchvision import datasets, transforms

    from automl_tl.features.extractor import FeatureExtractor
    from automl_tl.plugins.manager import get_plugins

    spec = get_plugins().backbone("efficientnet_lite0")
    prep = spec.preprocessing
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(prep.crop_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(prep.resize_size),
            transforms.CenterCrop(prep.crop_size),
            transforms.ToTensor(),
        ]
    )
    sets = {
        "train": datasets.ImageFolder(data / "train", train_tf),
        "val": datasets.ImageFolder(data / "val", val_tf),
    }
    loaders = {
        k: torch.utils.data.DataLoader(
            v, batch_size=batch_size, shuffle=k == "train", num_workers=workers
        )
        for k, v in sets.items()
    }
    torch.manual_seed(0)
    backbone = FeatureExtractor(spec.build(None), prep, len(spec.stages) - 1).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    fc = nn.Linear(spec.stages[-1].width, len(sets["train"].classes))
    opt = torch.optim.SGD(fc.parameters(), lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_state = 0.0, None
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for phase in ("train", "val"):
            fc.train(phase == "train")
            correct = total = 0
            for x, y in loaders[phase]:
                with torch.no_grad():
                    feats = backbone(x)
                with torch.set_grad_enabled(phase == "train"):
                    logits = fc(feats)
                    if phase == "train":
                        opt.zero_grad()
                        loss_fn(logits, y).backward()
                        opt.step()
                correct += int((logits.argmax(1) == y).sum())
                total += len(y)
            if phase == "train":
                sched.step()
            elif correct / total > best_acc:
                best_acc, best_state = correct / total, copy.deepcopy(fc.state_dict())
        print(f"  tutorial epoch {epoch + 1}/{epochs}: best val {best_acc:.4f}", flush=True)
    assert best_state is not None
    return {"seconds": time.perf_counter() - t0, "val_acc": best_acc}


def automl_fit(data: Path, out: Path, epochs: int, dtype: str = "fp16") -> tuple[dict, object]:
    """One in-process `AutoTransfer.fit` (case 1, `epochs` head epochs, no early stop)."""
    from automl_tl import AutoTransfer

    t0 = time.perf_counter()
    est = AutoTransfer(case=1, epochs=epochs, patience=epochs, out=out, cache_dtype=dtype)
    est.fit(data)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "val_acc": est.metrics_["validation"]["accuracy"]}, est


def onnx_vs_eager(est, files: list[Path], batch_size: int, repeats: int = 3) -> dict:
    """Images/s of the exported model in onnxruntime and of the fitted torch model, on the
    same pre-decoded batches, alternating to share the machine's load fairly."""
    import onnxruntime as ort

    from automl_tl.core.machine import ort_providers
    from automl_tl.data.batches import iter_batches

    batches = list(iter_batches(files, est.spec_.preprocessing, batch_size))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(est.onnx_path_), opts, providers=ort_providers())
    model = est.model_.eval()
    times = {"onnxruntime": [], "torch": []}
    with torch.inference_mode():
        model(torch.from_numpy(batches[0]))  # warm-up both
        sess.run(None, {"image": batches[0]})
        for _ in range(repeats):
            t = time.perf_counter()
            for b in batches:
                sess.run(None, {"image": b})
            times["onnxruntime"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for b in batches:
                model(torch.from_numpy(b))
            times["torch"].append(time.perf_counter() - t)
    n = sum(len(b) for b in batches)
    return {k: n / min(v) for k, v in times.items()}


def cache_bytes_per_value(cache_dir: Path) -> dict:
    """Bytes on disk per stored feature value (shard headers and int8 scales included),
    per storage dtype, over every stage the fits stored."""
    from automl_tl.features.store import FeatureStore

    totals: dict[str, list[int]] = {}
    for space in FeatureStore(cache_dir).info()["spaces"]:
        acc = totals.setdefault(space["dtype"], [0, 0])
        for stage in space["stages"].values():
            acc[0] += stage["bytes"]
            acc[1] += stage["rows"] * stage["width"]
    return {dtype: b / max(n, 1) for dtype, (b, n) in totals.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the tutorial")
    ap.add_argument("--skip-tutorial", action="store_true", help="only the automl-tl side")
    ap.add_argument("--markdown", type=Path, help="also write the rows as a markdown table")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: dataset {args.data} is absent (pass --data DIR)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-fit-"))
    os.environ["AUTOML_TL_CACHE_DIR"] = str(tmp / "cache")  # a cold cache of our own
    print(f"data {args.data}, {args.epochs} head epochs, torch threads {torch.get_num_threads()}")
    cold, _ = automl_fit(args.data, tmp / "cold", args.epochs)
    print(f"automl-tl cold cache: {cold['seconds']:.1f}s, val {cold['val_acc']:.4f}", flush=True)
    warm, est = automl_fit(args.data, tmp / "warm", args.epochs)
    print(f"automl-tl warm cache: {warm['seconds']:.1f}s, val {warm['val_acc']:.4f}", flush=True)
    int8, _ = automl_fit(args.data, tmp / "int8", args.epochs, "int8")
    print(f"automl-tl int8 cache (cold): val {int8['val_acc']:.4f}", flush=True)
    per_value = cache_bytes_per_value(tmp / "cache")
    files = sorted((args.data / "val").rglob("*.jpg"))[:64]
    speed = onnx_vs_eager(est, files, args.batch_size)
    rows = [
        (
            "warm-cache re-fit / cold fit (wall time)",
            f"{warm['seconds']:.1f}s / {cold['seconds']:.1f}s",
            f"{warm['seconds'] / cold['seconds']:.3f}",
            "<= 0.10",
        ),
        (
            "exported model: onnxruntime / torch eager (img/s)",
            f"{speed['onnxruntime']:.1f} / {speed['torch']:.1f}",
            f"{speed['onnxruntime'] / speed['torch']:.2f}x",
            ">= 1x",
        ),
        (
            "cache bytes per feature value: fp16 / int8 (fp32 = 4)",
            f"{per_value.get('fp16', 0):.3f} / {per_value.get('int8', 0):.3f}",
            f"{per_value.get('fp16', 0) / 4:.2f} / {per_value.get('int8', 0) / 4:.2f} of fp32 "
            f"(val acc {cold['val_acc']:.3f} / {int8['val_acc']:.3f})",
            "fp16 default, int8 option",
        ),
    ]
    if not args.skip_tutorial:
        tut = tutorial_loop(args.data, args.epochs, args.batch_size, args.workers)
        print(f"tutorial loop: {tut['seconds']:.1f}s, val {tut['val_acc']:.4f}", flush=True)
        rows.insert(
            0,
            (
                f"case-1 fit, {args.epochs} head epochs: tutorial loop / automl-tl cold "
                f"(val acc {tut['val_acc']:.3f} / {cold['val_acc']:.3f})",
                f"{tut['seconds']:.1f}s / {cold['seconds']:.1f}s",
                f"{tut['seconds'] / cold['seconds']:.1f}x",
                ">= 10x, same or better accuracy",
            ),
        )
    table = ["| measurement | values | ratio | target |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())

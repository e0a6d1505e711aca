"""fp32 against int8, side by side on this machine: a fit per backbone (`automl-tl fit DATA
--case 1`, reused when its run folder is already there), then export.quantize.int8_variant on
its model.onnx, the step a fit would run, with the issue's keep rule (1.2x, 0.01).

    python benchmarks/bench_int8.py [--data DIR] [--backbones a,b] [--speed-only c]
                                    [--work DIR] [--calibration 32] [--val-cap 300]

Images: calibration = `--calibration` images of the training split drawn with seed 0;
validation = the dataset's val/ folder (the split the fit chose its model on), or a subset of
`--val-cap` of its images drawn with seed 0. A dataset without split folders is split here
instead: the last 20% of each class folder's sorted files. `--speed-only` backbones are fitted
from their architecture's random initialisation (no download here): their speed is real, their
accuracy is not.

Prints one table row per backbone: fp32 and int8 images/s, speedup, both accuracies, the
verdict with its reason, the seconds the step took, whether the CPU has VNNI; and the load
average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime

from automl_tl.core.console import Console
from automl_tl.data.preprocess import Preprocessing, batch_to_float, load_for_model
from automl_tl.export.quantize import cpu_int8_flags, int8_variant

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"
CLI = str(Path(sys.executable).with_name("automl-tl"))
SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def split_files(data: Path, classes: list[str]) -> tuple[list, list]:
    """(train, validation) lists of (file, class index): split folders when the dataset has
    them, else the last 20% of each sorted class folder."""
    train, val = [], []
    for i, name in enumerate(classes):
        if (data / "train").is_dir() and (data / "val").is_dir():
            train += [(f, i) for f in _files(data / "train" / name)]
            val += [(f, i) for f in _files(data / "val" / name)]
        else:
            files = _files(data / name)
            cut = len(files) - max(1, len(files) // 5)
            train += [(f, i) for f in files[:cut]]
            val += [(f, i) for f in files[cut:]]
    return train, val


def load(items: list, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images (float32 NCHW in [0, 1]) and labels; files that do not decode are left
    out, as the fit's audit leaves them out."""
    arrays, labels = [], []
    for path, label in items:
        try:
            arrays.append(load_for_model(path, prep))
            labels.append(label)
        except (OSError, ValueError):
            continue
    return batch_to_float(arrays), np.array(labels)


def fit(data: Path, backbone: str, out: Path, random_weights: bool) -> Path:
    """The run folder's model.onnx, fitting it first unless a finished run is there."""
    model = out / "model.onnx"
    if model.is_file() and (out / "metrics.json").is_file():
        return model
    cmd = [CLI, "fit", str(data), "--backbone", backbone, "--case", "1", "--out", str(out), "-q"]
    if random_weights:  # the architecture's own initialisation, saved as a weight file
        import torch
        import torchvision

        weights = out.parent / f"{backbone}.random.pth"
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(backbone, weights=None).state_dict(), weights)
        cmd += ["--weights", str(weights)]
    if out.exists():
        cmd.append("--overwrite")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fit of {backbone} failed: {done.stderr.strip()[-400:]}")
    return model


def metadata(model: Path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    return {k: json.loads(meta[k]) for k in ("automl_tl.classes", "automl_tl.preprocessing")}


def measure(data: Path, model: Path, args) -> dict:
    meta = metadata(model)
    prep = Preprocessing.from_dict(meta["automl_tl.preprocessing"])
    train, val = split_files(data, meta["automl_tl.classes"])
    rng = np.random.default_rng(0)
    picked = rng.choice(len(train), min(args.calibration, len(train)), replace=False)
    calibration, _ = load([train[i] for i in sorted(picked)], prep)
    if args.val_cap and len(val) > args.val_cap:  # a seeded subset across every class
        val = [val[i] for i in sorted(rng.choice(len(val), args.val_cap, replace=False))]
    images, labels = load(val, prep)
    out = model.with_name("model.int8.onnx")
    ood = json.loads(onnxruntime.InferenceSession(str(model)).get_modelmeta()
                     .custom_metadata_map.get("automl_tl.ood", "{}"))  # fmt: skip
    return int8_variant(model, calibration, images, labels, out, Console(), args.repeats,
                        ood_threshold=ood.get("threshold"))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite2")
    ap.add_argument("--speed-only", default="resnet18", help="random-weight backbones ('' none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/automl-tl-bench-int8"))
    ap.add_argument("--calibration", type=int, default=32)  # what a fit uses
    ap.add_argument("--val-cap", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: dataset {args.data} is absent (pass --data DIR)")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = [(b, False) for b in args.backbones.split(",") if b]
    jobs += [(b, True) for b in args.speed_only.split(",") if b]
    rows = []
    for backbone, random_weights in jobs:
        name = backbone + (" (random weights: speed only)" if random_weights else "")
        try:
            model = fit(args.data, backbone, args.work / backbone, random_weights)
            rows.append((name, measure(args.data, model, args), os.getloadavg()[0]))
        except Exception as e:  # noqa: BLE001 - one failed backbone still prints the others
            rows.append((name, {"reason": f"failed: {e}"}, os.getloadavg()[0]))
    flags = cpu_int8_flags()
    print(f"\ndata: {args.data.name}; cores: {os.cpu_count()}; int8 CPU flags: {flags or 'none'}")
    print(
        "| backbone | fp32 img/s | int8 img/s | speedup | fp32 acc | int8 acc | n val "
        "| kept | why | step s | VNNI | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r, load_avg in rows:
        if r.get("speedup") is None:
            print(f"| {name} | - | - | - | - | - | - | no | {r['reason']} | - | - | - |")
            continue
        print(
            f"| {name} | {r['fp32_images_per_second']:.1f} | {r['int8_images_per_second']:.1f} "
            f"| {r['speedup']:.2f}x | {r['fp32_accuracy']:.4f} | {r['int8_accuracy']:.4f} "
            f"| {r['n_val']} | {'yes' if r['kept'] else 'no'} | {r['reason']} "
            f"| {r['seconds']:.1f} (quantise {r['quantise_seconds']:.1f}) "
            f"| {'yes' if r['vnni'] else 'no'} | {load_avg:.1f} |"
        )
    return 1 if any(r.get("speedup") is None for _, r, _ in rows) else 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"total {time.perf_counter() - start:.0f}s")
    sys.exit(code)

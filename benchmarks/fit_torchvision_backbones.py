"""`automl-tl fit` with every torchvision backbone, each from a locally saved weight file.

Model hubs are unreachable here, so the weight files are the architectures' own random
initialisations saved with torch.save: this shows the local-weights path end to end
(build, stages, embedding, head, ONNX export and check), not pretrained accuracy.

    python benchmarks/fit_torchvision_backbones.py [--data DIR] [--backbones a,b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"
BACKBONES = "resnet18,resnet50,mobilenet_v3_large,efficientnet_b0,convnext_tiny,vit_b_16"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbones", default=BACKBONES)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: dataset {args.data} is absent (pass --data DIR)")
        return 0
    cli = str(Path(sys.executable).with_name("automl-tl"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones.split(","):
            weights = Path(tmp) / f"{name}.pth"
            torch.manual_seed(0)
            torch.save(torchvision.models.get_model(name, weights=None).state_dict(), weights)
            t0 = time.perf_counter()
            res = subprocess.run(
                [cli, "fit", str(args.data), "--backbone", name, "--weights", str(weights),
                 "--case", "1", "--out", str(Path(tmp) / name), "--json", "-q"],
                capture_output=True, text=True,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            if res.returncode != 0:
                rows.append((name, "FAILED", res.stderr.strip().splitlines()[-1], seconds))
                continue
            s = json.loads(res.stdout)
            check = f"export max|diff| {s['export_check']['max_abs_diff']:.1e}"
            rows.append((name, f"{s['val_accuracy']:.3f}", check, seconds))
    print("| backbone | val accuracy (random-init weights) | export check | seconds |")
    print("|---|---|---|---|")
    for name, acc, check, seconds in rows:
        print(f"| {name} | {acc} | {check} | {seconds:.0f} |")
    return 1 if any(r[1] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

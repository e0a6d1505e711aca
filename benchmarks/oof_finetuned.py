"""Would fine-tuned probabilities find planted label errors where the frozen head's do not?

    python benchmarks/oof_finetuned.py [--dataset flowers5] [--rate 0.05] [--seed 0]
                                       [--epochs 3] [--size 128]

The same split and the same planted errors as bench_label_issues.py (seeded: the fit's split,
`--rate` of the training images moved to another class). Then every training and validation
image gets out-of-fold class probabilities from efficientnet_lite0 FINE-TUNED on the other four
folds (whole network, new head, BatchNorm statistics frozen, AdamW, horizontal flips;
`--epochs` at `--size` px), and confident learning (automl_tl.decide.label_issues, and
cleanlab on the same probabilities) ranks them. Printed: out-of-fold accuracy on the noisy
labels, flagged, precision and recall against the planted errors. Nothing is written. This
is an experiment, not a step of a fit: it costs five fine-tunings.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import SHARED
from PIL import Image

from automl_tl.core.console import Console
from automl_tl.data.audit import audit
from automl_tl.data.scan import scan
from automl_tl.data.split import split
from automl_tl.decide.label_issues import find_label_issues, stratified_folds
from automl_tl.plugins.manager import get_plugins
from automl_tl.train.tune_full import build_finetune_model


def _images(samples, size: int) -> torch.Tensor:
    out = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    for i, s in enumerate(samples):
        with Image.open(s.path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return out


def _fine_tuned_probs(spec, x, y, k, held, kept, epochs, seed) -> np.ndarray:
    torch.manual_seed(seed)
    model = build_finetune_model(spec, k, seed=seed)
    head = list(model.head.parameters())
    ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": body, "lr": 1e-4}, {"params": head, "lr": 1e-3}])
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for m in model.modules():  # BatchNorm statistics frozen, as warm fine-tuning does
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        order = rng.permutation(kept)
        for b in range(0, len(order), 32):
            idx = torch.from_numpy(order[b : b + 32])
            xb = x[idx].float() / 255
            flip = torch.rand(len(idx)) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = F.cross_entropy(model(xb), torch.from_numpy(y[order[b : b + 32]]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    out = []
    with torch.inference_mode():
        for b in range(0, len(held), 64):
            xb = x[torch.from_numpy(held[b : b + 64])].float() / 255
            logits = (model(xb) + model(xb.flip(3))) / 2
            out.append(torch.softmax(logits, 1).double().numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="flowers5")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    spec = get_plugins().backbone("efficientnet_lite0")
    report = audit(scan(SHARED / args.dataset), Console(quiet=True))
    train, val, _ = split(report.samples, 0.2, args.seed)
    classes = report.classes
    k = len(classes)
    y_tr = np.array([classes.index(s.label) for s in train])
    y_va = np.array([classes.index(s.label) for s in val])
    rng = np.random.default_rng(args.seed)  # the planting of bench_label_issues.py
    planted = rng.choice(len(train), round(args.rate * len(train)), replace=False)
    noisy = y_tr.copy()
    noisy[planted] = (y_tr[planted] + rng.integers(1, k, len(planted))) % k
    y_all = np.concatenate([noisy, y_va])
    t0 = time.perf_counter()
    x = _images(train + val, args.size)
    print(f"{args.dataset}: {len(y_all)} images decoded at {args.size} px in "
          f"{time.perf_counter() - t0:.0f} s; {len(planted)} planted", flush=True)  # fmt: skip
    fold = stratified_folds(y_all, 5, args.seed)  # the folds a fit uses
    probs = np.zeros((len(y_all), k))
    for f in range(5):
        t0 = time.perf_counter()
        held, kept = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        probs[held] = _fine_tuned_probs(spec, x, y_all, k, held, kept, args.epochs, args.seed)
        acc = float((probs[held].argmax(1) == y_all[held]).mean())
        print(f"fold {f}: {len(kept)} trained, {len(held)} held out, accuracy on the noisy "
              f"labels {acc:.4f}, {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    truth = set(planted.tolist())
    print(f"out-of-fold accuracy on the noisy labels: {(probs.argmax(1) == y_all).mean():.4f}")
    ours = find_label_issues(probs, y_all)
    hits = len(set(ours.index.tolist()) & truth)
    print(f"ours: flagged {len(ours)}, precision {hits / max(len(ours), 1):.3f}, "
          f"recall {hits / len(truth):.3f}")  # fmt: skip
    top = set(ours.index[: len(truth)].tolist())
    print(f"ours, the {len(truth)} most likely: precision {len(top & truth) / len(truth):.3f}")
    try:
        from cleanlab.filter import find_label_issues as cl
    except ImportError:
        return
    theirs = np.flatnonzero(cl(y_all, probs, filter_by="prune_by_noise_rate"))
    hits = len(set(theirs.tolist()) & truth)
    print(f"cleanlab: flagged {len(theirs)}, precision {hits / max(len(theirs), 1):.3f}, "
          f"recall {hits / len(truth):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

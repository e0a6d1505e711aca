"""Full fine-tuning under a fixed wall budget: the earlier input path against the new one,
side by side on the same data, model, seed and schedule.

    python benchmarks/bench_finetune.py [--data DIR] [--per-class N] [--val-per-class M]
        [--budget 120] [--methods full-old,full-new] [--batch-size 32] [--threads T]
        [--json out.json]

Methods (one entry each in METHODS; another method is one more function and entry):
  full-old   every image decoded and augmented with PIL on every use (as before)
  full-new   each image decoded once per run into a uint8 store, augmented as tensors, at the
             input size chosen from the images (data.input_size.choose_input, as fit does)
  full-new-fixed   full-new at the backbone's own input size (separates the two effects)
  partial    the top 2 stages trained on cached maps of the stage below them, warm-started
             from a linear probe (automl_tl.train.tune_top; setup = caching the maps, in the budget)

Each method gets `--budget` seconds of wall time, from building the model (and decoding its
store) to its last optimiser step; the learning rate warms up over the first 10% of the budget
and follows a cosine to zero at its end, so every method gets a whole schedule. Validation
(not timed) then scores the model on the validation images with the eval preprocessing of the
input size it trained at. Printed per method: setup seconds, training images/s, seconds per
epoch (projected from the rate when the budget ends mid-epoch), epochs done, the share of the
loop spent waiting for input, and validation accuracy. Other processes on the machine change
every number: the load average is printed with each.

The data: DIR/train/<class>/ (else DIR/<class>/) for training; validation from DIR/val/, else
DIR/test/, else the training pool after the training subset. --per-class N draws N training
images per class (seeded; 0 = all), --val-per-class M as many validation images (0 = all).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from automl_tl.core.console import Console
from automl_tl.data.files import expand_paths
from automl_tl.data.images import EvalImages, ImageDataset, class_weights, make_loader, mix_seed
from automl_tl.data.input_size import choose_input
from automl_tl.data.preprocess import Preprocessing
from automl_tl.plugins.manager import get_plugins
from automl_tl.train import tune_full as ft

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"
_HELDOUT = ("val", "valid", "validation", "test")


@dataclass
class Task:
    """What every method trains on: items, backbone, settings, the wall budget."""

    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    classes: list[str]
    backbone: str
    budget: float
    config: ft.FinetuneConfig
    console: Console
    _val_cache: dict = field(default_factory=dict)

    @property
    def spec(self):
        return get_plugins().backbone(self.backbone)

    def val_batches(self, prep: Preprocessing, batch: int = 64):
        """Validation batches for `prep`, decoded once per input size across methods."""
        if prep not in self._val_cache:
            self._val_cache[prep] = EvalImages([p for p, _ in self.val], prep)
        return self._val_cache[prep].batches(batch)


# ----------------------------------------------------------------------------- data
def _class_files(folder: Path) -> dict[str, list[Path]]:
    return {
        d.name: expand_paths([d])
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def load_items(root: Path, per_class: int, val_per_class: int, seed: int):
    """(train, val, classes): seeded per-class subsets (0 = all)."""
    sub = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    pool = _class_files(sub["train"]) if "train" in sub else _class_files(root)
    held = next((_class_files(sub[n]) for n in _HELDOUT if n in sub), None)
    classes = sorted(pool)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, name in enumerate(classes):
        files = [pool[name][i] for i in rng.permutation(len(pool[name]))]
        n = per_class or len(files)
        train += [(p, label) for p in files[:n]]
        rest = files[n:] if held is None else held.get(name, [])
        if held is not None:
            rest = [rest[i] for i in rng.permutation(len(rest))]
        val += [(p, label) for p in rest[: val_per_class or len(rest)]]
    return train, val, classes


# ------------------------------------------------------------------------ training
def _lr_factor(frac: float, warm: float = 0.1) -> float:
    """Warm-up over the first `warm` of the budget, then cosine to zero at its end."""
    if frac < warm:
        return (frac + 1e-3) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (frac - warm) / (1 - warm))))


def train_full(task: Task, dataset: ImageDataset, prep: Preprocessing, start: float) -> dict:
    """Fine-tune the whole network on `dataset` until `start + budget`; measure and validate."""
    torch.manual_seed(task.config.seed)
    model = ft.build_finetune_model(task.spec, len(task.classes))
    model.to(memory_format=torch.channels_last)
    config = task.config
    groups = [
        {"params": list(model.extractor.parameters()), "lr": config.lr_backbone},
        {"params": list(model.head.parameters()), "lr": config.lr_head},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    weight = class_weights([y for _, y in dataset.items], len(task.classes))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    loader = make_loader(dataset, config, 0, 1, torch.device("cpu"))
    setup = time.perf_counter() - start
    end = start + task.budget
    images, steps, waited, epoch = 0, 0, 0.0, 0
    loop_start = time.perf_counter()
    model.train()
    while time.perf_counter() < end:
        epoch += 1
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(mix_seed(config.seed, epoch, 1_000_003))
        batches = iter(loader)
        while True:
            t = time.perf_counter()
            if t >= end:
                break
            try:
                x, y = next(batches)
            except StopIteration:
                break
            waited += time.perf_counter() - t
            factor = _lr_factor((time.perf_counter() - start) / task.budget)
            for g, lr in zip(opt.param_groups, base, strict=True):
                g["lr"] = lr * factor
            x = x.contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(y)
            steps += 1
    loop = time.perf_counter() - loop_start
    rate = images / loop if loop > 0 else 0.0
    n = len(dataset)
    return {
        "crop": prep.crop_size,
        "setup_s": round(setup, 2),
        "train_img_per_s": round(rate, 3),
        "epoch_s": round(n / rate, 1) if rate else None,
        "epochs": round(images / n, 2),
        "steps": steps,
        "input_wait_share": round(waited / loop, 3) if loop else None,
        "val_acc": round(validate(task, model, prep), 4),
    }


@torch.no_grad()
def validate(task: Task, model, prep: Preprocessing) -> float:
    model.eval()
    labels = torch.tensor([y for _, y in task.val])
    correct, pos = 0, 0
    for arr in task.val_batches(prep):
        x = torch.from_numpy(arr).contiguous(memory_format=torch.channels_last)
        correct += int((model(x).argmax(1) == labels[pos : pos + len(arr)]).sum())
        pos += len(arr)
    return correct / pos


# ------------------------------------------------------------------------- methods
def full_old(task: Task) -> dict:
    start = time.perf_counter()
    prep = task.spec.preprocessing
    dataset = ImageDataset(task.train, prep, True, task.config.seed, decode_once=False)
    return {"input": "PIL decode + augment per use", **train_full(task, dataset, prep, start)}


def _full_decode_once(task: Task, choose_size: bool) -> dict:
    start = time.perf_counter()
    prep = task.spec.preprocessing
    if choose_size:
        prep, _ = choose_input(prep, "auto", [path for path, _ in task.train], task.config.seed)
    dataset = ImageDataset(task.train, prep, True, task.config.seed)
    dataset.fill(task.console)
    kept = f"{dataset.images.kept}/{len(dataset)} kept, {dataset.images.nbytes / 2**20:.0f} MiB"
    return {
        "input": f"decoded once ({kept}), tensor augment",
        **train_full(task, dataset, prep, start),
    }


def full_new(task: Task) -> dict:
    return _full_decode_once(task, choose_size=True)


def full_new_fixed(task: Task) -> dict:
    return _full_decode_once(task, choose_size=False)


def partial(task: Task, depth: int = 2) -> dict:
    """The top `depth` stages trained on cached maps (automl_tl.train.tune_top), warm-started from a
    logistic regression on the last stage pooled (what the full methods fine-tune). Setup
    counts against the budget: one onnxruntime pass over train + validation storing the
    pooled last stage and the map below the trained stages (a fresh temporary cache), and
    the probe. The schedule spans the epochs the measured rate fits into what is left."""
    import copy
    import shutil
    import tempfile

    from automl_tl.data.audit import _digest
    from automl_tl.data.files import Sample
    from automl_tl.features.cache import FeatureCache
    from automl_tl.features.views import frozen_views
    from automl_tl.train.logreg import fit_logreg
    from automl_tl.train.tune_top import PartialConfig, step_rate, train_top
    from automl_tl.train.tune_top_model import map_view, top_model

    start = time.perf_counter()
    spec = task.spec
    net = spec.build()
    last = len(spec.stages) - 1
    after = last - depth
    pooled = next(v for v in frozen_views(spec) if v.stage_index == last and v.grid == 1)
    view = map_view(spec, after)
    cache = Path(tempfile.mkdtemp(prefix="bench-partial-"))
    try:
        parts = [
            [Sample(Path(p), str(y), digest=_digest(Path(p))) for p, y in items]
            for items in (task.train, task.val)
        ]
        features = FeatureCache(spec, net, cache, views=[view, pooled])
        features.ensure(parts[0] + parts[1])
        yt, yv = (np.array([y for _, y in items]) for items in (task.train, task.val))
        n = len(task.classes)
        probe = fit_logreg(
            features.rows(parts[0], pooled.name), yt, features.rows(parts[1], pooled.name), yv, n
        )
        maps = [features.rows(part, view.name) for part in parts]
        top = top_model(spec, net, after, last, 1, probe.head)
        top.trained_parameters(top.shape)
        rate = step_rate(copy.deepcopy(top), top.shape)
        setup = time.perf_counter() - start
        left = task.budget - setup
        epochs = max(1, int(left * rate / (len(yt) + len(yv) / 3)))
        config = PartialConfig(
            epochs=epochs,
            patience=10**6,
            trial_z=-math.inf,
            accept_z=-math.inf,
            seed=task.config.seed,
        )
        t0 = time.perf_counter()
        res = train_top(top, maps[0], yt, maps[1], yv, n, config, deadline=time.monotonic() + left)
        loop = time.perf_counter() - t0
        images = sum(h.get("images", 0) for h in res.history)
        train_rate = images / max(loop, 1e-9)
        return {
            "input": f"maps of {spec.stages[after].name} {top.shape} cached (fp16), "
            f"stages {spec.stages[after + 1].name}..{spec.stages[last].name} trained; "
            f"warm start {res.history[0]['val_acc']:.3f}",
            "crop": spec.preprocessing.crop_size,
            "setup_s": round(setup, 2),
            "train_img_per_s": round(train_rate, 3),
            "epoch_s": round(len(yt) / train_rate, 1) if train_rate else None,
            "epochs": round(images / len(yt), 2),
            "steps": None,
            "input_wait_share": None,
            # the last epoch's model, like the full methods (not the best-on-validation pick)
            "val_acc": round(res.history[-1]["val_acc"], 4),
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


METHODS: dict[str, Callable[[Task], dict]] = {
    "full-old": full_old,
    "full-new": full_new,
    "full-new-fixed": full_new_fixed,
    "partial": partial,
}


# ---------------------------------------------------------------------------- main
def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--per-class", type=int, default=0, help="training images per class; 0 = all")
    ap.add_argument("--val-per-class", type=int, default=0, help="0 = all")
    ap.add_argument("--budget", type=float, default=120.0, help="wall seconds per method")
    ap.add_argument("--methods", default="full-old,full-new", help=", ".join(METHODS))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    root = Path(args.data)
    if not root.is_dir():
        print(f"skipped: {root} is absent")
        return 0
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        print(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    train, val, classes = load_items(root, args.per_class, args.val_per_class, args.seed)
    config = ft.FinetuneConfig(batch_size=args.batch_size, num_workers=0, seed=args.seed)
    task = Task(train, val, classes, args.backbone, args.budget, config, Console(quiet=True))
    print(
        f"data {root.name}: {len(train)} training / {len(val)} validation images, "
        f"{len(classes)} classes; {args.backbone}, batch {args.batch_size}, budget "
        f"{args.budget:.0f} s per method; torch threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}",
        flush=True,
    )
    head = (
        f"{'method':<15} {'crop':>4} {'setup s':>7} {'img/s':>6} {'epoch s':>8} {'epochs':>6} "
        f"{'wait':>5} {'val acc':>7}  {'load avg':<14} input"
    )
    print(head, flush=True)
    results = {}
    for name in names:
        load_before = _load()
        r = METHODS[name](task)
        r["load_avg"] = f"{load_before} -> {_load()}"
        results[name] = r
        wait = "-" if r.get("input_wait_share") is None else f"{100 * r['input_wait_share']:.0f}%"
        print(
            f"{name:<15} {r.get('crop', '-'):>4} {r['setup_s']:>7.1f} "
            f"{r['train_img_per_s']:>6.2f} {r['epoch_s'] or float('nan'):>8.1f} "
            f"{r['epochs']:>6.2f} {wait:>5} {r['val_acc']:>7.3f}  "
            f"{load_before:<14} {r.get('input', '')}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

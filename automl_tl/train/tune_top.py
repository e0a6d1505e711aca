"""Fine-tuning the top stages of a backbone on cached feature maps (LP-FT on a CPU).

The frozen part of the network runs once per image: the map of stage `after` is stored in the
feature cache as a view that keeps the whole map (grid 0; fp16, or int8 with a per-row scale,
by image content), so a killed run keeps what it computed and a re-run computes nothing. The
stages after it, up to the frozen choice's cut, and the frozen choice's head are then trained
on those maps; the bottom of the network never runs again.

How it trains, and why:
- Warm start (linear probe, then fine-tune; Kumar et al. 2022, "Fine-Tuning can Distort
  Pretrained Features"): the head starts as the frozen choice's logistic regression, so
  epoch 0 *is* the frozen result and the head's first gradients are small.
- BatchNorm statistics stay frozen: with few, homogeneous batches they drift from what the
  warm-started head was fitted on (measured on chest_xray: validation fell every epoch with
  BatchNorm in train mode, and held with it frozen).
- No augmentation on maps: a flip of a stage's map is not the map of the flipped image, and
  digits or X-rays are not flip-invariant anyway. The warm start, frozen statistics, a few
  epochs and the acceptance rule below stand in for it; `benchmarks/bench_finetune.py`
  measures what it costs against full fine-tuning on augmented images.
- Acceptance: the best epoch replaces the warm start only when it validates above it by more
  than the noise of the paired difference (1.645 standard errors, one-sided 95%), so noise
  never trades a frozen model for a worse one.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.console import Console
from ..core.distributed import world
from ..core.errors import AutoTLError
from ..core.stats import paired_se
from ..data.images import class_weights, mix_seed
from ..features import ops
from .checkpoints import CheckpointError, load_checkpoint, write_checkpoint
from .tune_top_model import TopModel, _batches, _evaluate

__all__ = [
    "PartialConfig",
    "PartialResult",
    "train_top",
    "step_rate",
]

FORMAT = "automl_tl.partial/1"


@dataclass(frozen=True)
class PartialConfig:
    """Hyper-parameters of top-stage fine-tuning on cached maps."""

    epochs: int = 6
    patience: int = 2
    batch_size: int = 64
    lr: float = 1e-4  # top stages and head alike: the head is warm
    weight_decay: float = 1e-4
    shift: int = 1  # random translation of each training map by up to this many cells
    mixup: float = 0.0  # Beta(a, a) mixing of training maps and labels (manifold mixup); 0: off
    accept_z: float = 1.645  # gain over the warm start needed to keep a fine-tuned epoch
    trial_z: float = 1.0  # gain the first epoch (the trial) needs to go on
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PartialResult:
    """The kept top model (fine-tuned, or the warm start when no epoch earned it), history,
    the validation predictions of the kept model, and why."""

    model: TopModel
    best_epoch: int  # 0: the warm start was kept
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "epochs"
    notes: list[str] = field(default_factory=list)
    val_pred: np.ndarray | None = None


def step_rate(model: TopModel, shape, batch: int = 64, steps: int = 2) -> float:
    """Measured training images per second of `model` on maps of `shape`: whole steps as
    train_top takes them (shift, forward, backward, AdamW), one warm-up step, then `steps`
    timed. It trains `model`: measure on a copy (top_model makes one)."""
    x = torch.rand(batch, *shape)
    y = torch.zeros(batch, dtype=torch.long)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    model.channels_last().train_mode()
    times = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            xa, ya, _, _ = _augment(x, y, PartialConfig())
            loss = F.cross_entropy(model(xa), ya)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    for p in params:
        p.grad = None
    model.channels_last(False).eval()
    return batch / max(min(times[1:]), 1e-9)


def train_top(
    model: TopModel,
    maps_train,
    y_train: np.ndarray,
    maps_val,
    y_val: np.ndarray,
    n_classes: int,
    config: PartialConfig = PartialConfig(),
    console: Console | None = None,
    deadline: float | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> PartialResult:
    """Train `model` (warm-started head) on stored map rows; keep what validates best, and
    the warm start unless an epoch beats it by more than the paired noise.

    `maps_*` are feature-cache rows (StoredRows) of the map view, `deadline` a
    time.monotonic() value by which training stops (mid-epoch if need be). The trial is the
    first epoch: training goes on only when it validates above the warm start by more than
    `trial_z` paired standard errors.

    With `checkpoint`, the run's state is written there atomically after every epoch; with
    `resume`, a checkpoint of the same data and settings is continued (one that cannot be
    read safely, or is of other data or settings, is ignored with a warning).
    """
    console = console or Console(quiet=True)
    shape = _shape_of(maps_train, model)
    yt = torch.as_tensor(np.asarray(y_train)).long()
    yv = torch.as_tensor(np.asarray(y_val)).long()
    data = _fingerprint(maps_train, y_train, maps_val, y_val)
    ck = _load(checkpoint, data, config, console) if checkpoint is not None and resume else None
    if ck is not None and ck["config"]["epochs"] != config.epochs:
        # The killed run's plan wins: its learning-rate schedule spans its epoch count, and
        # the deadline still stops this run early when there is less time now.
        console.note(
            f"resuming the interrupted run's plan of {ck['config']['epochs']} epochs "
            f"(this run would have planned {config.epochs})"
        )
        config = replace(config, epochs=int(ck["config"]["epochs"]))
    params = model.trained_parameters(shape)
    model.channels_last()
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(yt) / config.batch_size))
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(yt.tolist(), n_classes))
    warm_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss0, acc0, pred0 = _evaluate(model, maps_val, yv, shape, 256)
    history = [{"epoch": 0, "val_loss": loss0, "val_acc": acc0, "seconds": 0.0}]
    console.note(f"{'':10} warm start (the frozen head): val loss {loss0:.4f} acc {acc0:.4f}")
    best = {"epoch": 0, "key": (acc0, -loss0), "state": warm_state, "pred": pred0}
    stop, notes, start = "epochs", [], 1
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, notes, stop = ck["history"], ck["notes"], ck["stop"]
        b = ck["best"]
        best = {**b, "key": tuple(b["key"]), "pred": b["pred"].numpy()}
        start = ck["epoch"] + 1
        console.note(f"resuming fine-tuning on cached maps after epoch {ck['epoch']}")
    with torch.random.fork_rng(devices=[]):
        for epoch in range(start, config.epochs + 1):
            if stop != "epochs":
                break
            t0 = time.perf_counter()
            if deadline is not None and epoch > 1:
                last = history[-1]["seconds"]
                if time.monotonic() + last > deadline:
                    stop = "budget"
                    notes.append(
                        f"stopped before epoch {epoch}: one more ({last:.0f}s) would pass the "
                        "time budget"
                    )
                    break
            torch.manual_seed(mix_seed(config.seed, epoch))
            model.train_mode()
            seen, loss_sum, cut_short = 0, 0.0, False
            with console.progress(f"epoch {epoch}/{config.epochs}", len(yt), unit="img") as bar:
                for idx in _batches(len(yt), config.batch_size, mix_seed(config.seed, epoch, 7)):
                    x = ops.gather_dequantize(maps_train.values, maps_train.scales, idx)
                    x, y, y2, lam = _augment(x.view(-1, *shape), yt[idx], config)
                    logits = model(x)
                    loss = loss_fn(logits, y)
                    if lam < 1.0:
                        loss = lam * loss + (1 - lam) * loss_fn(logits, y2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    seen += len(idx)
                    loss_sum += float(loss.detach()) * len(idx)
                    bar.update(len(idx))
                    if deadline is not None and time.monotonic() > deadline:
                        cut_short = True
                        break
            vloss, vacc, pred = _evaluate(model, maps_val, yv, shape, 256)
            seconds = time.perf_counter() - t0
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": loss_sum / max(seen, 1),
                    "images": seen,
                    "val_loss": vloss,
                    "val_acc": vacc,
                    "seconds": round(seconds, 3),
                }
            )
            better = (vacc, -vloss) > best["key"]
            if better:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {"epoch": epoch, "key": (vacc, -vloss), "state": state, "pred": pred}
            console.note(
                f"{'':10} train loss {loss_sum / max(seen, 1):.4f} | val loss {vloss:.4f} "
                f"acc {vacc:.4f}" + (" (best)" if better else "")
            )
            if cut_short:
                stop = "budget"
                notes.append(f"epoch {epoch} stopped after {seen} images: the time budget ran out")
            elif epoch == 1:
                gain, se = vacc - acc0, paired_se(pred, pred0, y_val)
                if gain <= config.trial_z * se:
                    stop = "trial"
                    notes.append(
                        f"trial epoch: validation {vacc:.4f} vs warm start {acc0:.4f} (gain "
                        f"{gain:+.4f}, noise {config.trial_z:g} x {se:.4f}): not worth going on"
                    )
            if stop == "epochs" and epoch - best["epoch"] >= config.patience and best["epoch"] > 0:
                stop = "early_stopping"
            if checkpoint is not None and world()[0] == 0:  # one writer under torchrun
                state = (model, opt, sched, best, history, notes, stop)
                _save(checkpoint, data, config, epoch, *state)
            if stop != "epochs":
                break
    gain = best["key"][0] - acc0
    se = paired_se(best["pred"], pred0, y_val)
    if best["epoch"] > 0 and gain > config.accept_z * se:
        kept, reason = (
            best,
            (
                f"kept epoch {best['epoch']}: validation {best['key'][0]:.4f} vs warm start "
                f"{acc0:.4f}, gain {gain:+.4f} > {config.accept_z:g} x paired SE {se:.4f}"
            ),
        )
    else:
        kept = {"epoch": 0, "state": warm_state, "pred": pred0}
        reason = (
            f"kept the warm start (the frozen head): best fine-tuned validation "
            f"{best['key'][0]:.4f} (epoch {best['epoch']}) vs {acc0:.4f} does not beat it by "
            f"{config.accept_z:g} x paired SE {se:.4f}"
        )
    model.load_state_dict(kept["state"])
    model.channels_last(False).eval()
    return PartialResult(model, kept["epoch"], history, stop, notes + [reason], kept["pred"])


def _augment(x: torch.Tensor, y: torch.Tensor, config: PartialConfig):
    """Training maps translated by up to `shift` cells each (edges replicated: a small shift
    of the image moves a stage's map by a fraction of a cell per stride), then mixed with a
    shuffled copy when `mixup` > 0. Draws from the torch RNG (seeded per epoch)."""
    s = config.shift
    if s > 0:
        h, w = x.shape[-2:]
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        off = torch.randint(0, 2 * s + 1, (len(x), 2))
        x = torch.stack(
            [padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(off.tolist())]
        )
    if config.mixup > 0:
        lam = float(torch.distributions.Beta(config.mixup, config.mixup).sample())
        perm = torch.randperm(len(x))
        return lam * x + (1 - lam) * x[perm], y, y[perm], lam
    return x, y, y, 1.0


def _fingerprint(maps_train, y_train, maps_val, y_val) -> str:
    """What a checkpoint must match to be continued: the labels and the stored rows' shapes
    and a sample of their values (the maps are cached by image content)."""
    h = hashlib.sha256()
    for rows, y in ((maps_train, y_train), (maps_val, y_val)):
        h.update(np.asarray(y, dtype=np.int64).tobytes())
        h.update(repr(tuple(rows.values.shape)).encode())
        step = max(1, len(rows) // 64)
        h.update(rows.values[::step].contiguous().numpy().tobytes())
    return h.hexdigest()


def _save(path, data, config, epoch, model, opt, sched, best, history, notes, stop) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(
        path,
        {
            "format": FORMAT,
            "data": data,
            "config": config.to_dict(),
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "best": {
                "epoch": best["epoch"],
                "key": list(best["key"]),
                "state": best["state"],
                "pred": torch.as_tensor(best["pred"]),
            },
            "history": history,
            "notes": notes,
            "stop": stop,
        },
    )


def _load(path: Path, data: str, config: PartialConfig, console: Console) -> dict | None:
    if not Path(path).exists():
        return None
    try:
        ck = load_checkpoint(path, FORMAT)
    except CheckpointError as e:
        console.warn(f"{e}; training the top stages from the start")
        return None
    now = config.to_dict()
    free = ("epochs",)  # another budget plans another count; the checkpoint's count is resumed
    if ck["data"] != data or any(ck["config"].get(k) != v for k, v in now.items() if k not in free):
        console.warn(
            f"checkpoint '{path}' is of other data or settings; training the top stages from "
            "the start"
        )
        return None
    return ck


def _shape_of(rows, model: TopModel) -> tuple[int, int, int]:
    """(C, H, W) of the stored maps, checked against the row width."""
    width = int(rows.values.shape[1])
    if math.prod(model.shape) != width:
        raise AutoTLError(
            f"cached map rows of width {width} are not maps of shape {model.shape}; "
            "clear the feature cache (automl-tl cache clear)"
        )
    return model.shape

"""Warm-started fine-tuning on a time budget: what the fine-tuning cases (3 and 4) run.

1. The frozen choice (cases 1/2, measured on cached features in seconds) is both the warm
   start and the fallback: every fine-tuning candidate starts from its head (linear probe,
   then fine-tune) and replaces it only when it validates better by more than the noise.
2. Before anything long starts, each candidate's wall time is estimated from throughput
   measured on this machine (a few real training steps each): fine-tuning the top k stages
   on cached maps (`automl_tl.train.tune_top`, k = 1..3 stages below the lowest stage the frozen
   head reads), full fine-tuning on images, and training from scratch.
3. The candidate that trains the most stages while fitting `MIN_EPOCHS` epochs into what is
   left of the budget runs. Its first epoch is a trial: it goes on only when that epoch
   validates above the warm start by more than the paired noise; otherwise the frozen model
   is kept and the reason says so.
4. From scratch (case 4) runs only on evidence that the pretrained features do not carry
   over (the frozen choice peaked at an early stage, stride <= 8) and when its estimate fits
   the budget left after the pretrained run; otherwise the reason says which was missing.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..core.distributed import broadcast_object
from ..core.stats import standard_error
from ..core.tasks import ImageResult
from .estimates import MIN_EPOCHS, clock
from .model import ExportModel
from .tune_top import PartialConfig, train_top
from .tune_top_model import predict_maps
from .warm import warm_config

__all__ = [
    "MIN_EPOCHS",
    "warm_finetune",
]

PARTIAL_CHECKPOINT = "partial.pt"


def pick(estimates: list[dict], mode: str = "auto") -> dict | None:
    """The candidate to run: the first that fits (most stages trained), restricted to the
    kind `mode` asks for ("partial" or "full"); None keeps the frozen choice."""
    for e in estimates:
        if e["kind"] in ("frozen", "scratch"):
            continue
        if mode != "auto" and e["kind"] != mode:
            continue
        if e["fits"] or mode != "auto":
            return e
    return None


def _accept(acc: float, base: float, se: float, z: float) -> bool:
    return acc - base > z * se


def _frozen(task, history: list[dict], notes: list[str]) -> ImageResult:
    """The frozen choice as the kept model: the caller's network up to the cut, its head."""
    warm, prep = task.warm_start, task.backbone.preprocessing
    model = ExportModel(warm.extractor(task.net, prep), warm.head)
    return ImageResult(model.eval(), 0, history, notes, "frozen", (warm.val_pred, warm.test_pred))


def warm_finetune(task, allow_scratch: bool) -> ImageResult:
    """Cases 3/4: run the candidate picked from the plan's estimates, warm-started from the
    frozen choice; keep the frozen model when nothing beats it (see the module docstring)."""
    warm, console = task.warm_start, task.console
    spec = task.backbone
    frozen_result = _frozen(task, [], [])
    choice = pick(task.estimates, task.mode)
    if choice is None and task.mode == "partial":
        frozen_result.notes.append(
            f"--finetune partial: backbone {spec.name} cannot run its top stages from cached "
            f"maps (no forward_from); kept the frozen choice '{warm.view}'"
        )
        return frozen_result
    if choice is None:
        cheapest = min(
            (e for e in task.estimates if e["kind"] in ("partial", "full")),
            key=lambda e: e["seconds"],
            default=None,
        )
        why = "no fine-tuning candidate fits the time budget"
        if cheapest is not None:
            left = task.deadline - time.monotonic() if task.deadline else math.inf
            why += (
                f" ({clock(max(left, 0))} left; the cheapest, {cheapest['candidate']}, needs "
                f"{clock(cheapest['setup_seconds'] + MIN_EPOCHS * cheapest['seconds_per_epoch'])}"
                f" for {MIN_EPOCHS} epochs)"
            )
        frozen_result.notes.append(f"{why}: kept the frozen choice '{warm.view}'")
        return frozen_result
    console.note(f"fine-tune: {choice['candidate']}: {choice['stages']}")
    if choice["kind"] == "partial":
        result = _run_partial(task, choice)
    else:
        result = _run_full(task, choice)
    result.ran = choice["candidate"]
    if allow_scratch:
        # rank 0's verdict on every rank: it reads the clock, and the scratch run is collective
        verdict, go = broadcast_object(_scratch_verdict(task))
        result.notes.append(verdict)
        if go:
            result = _run_scratch(task, result)
    return result


def _scratch_verdict(task) -> tuple[str, bool]:
    """Case 4's from-scratch run: the evidence it needs, whether it is there (and a reason)."""
    spec, warm = task.backbone, task.warm_start
    stride = spec.stages[warm.stage_index].stride
    scratch = next((e for e in task.estimates if e["kind"] == "scratch"), None)
    left = task.deadline - time.monotonic() if task.deadline else math.inf
    early = stride <= 8
    need = scratch["seconds"] if scratch else math.inf
    if early and need <= left:
        return (
            f"from-scratch run: the frozen choice peaked at stride {stride} (<= 8: the "
            f"pretrained deep features do not carry over) and its estimate ({clock(need)}) "
            f"fits the {clock(left)} left"
        ), True
    parts = []
    if not early:
        parts.append(
            f"the frozen choice peaked at '{spec.stages[warm.stage_index].name}' (stride "
            f"{stride} > 8): the pretrained features carry over"
        )
    if need > left:
        parts.append(f"its estimate ({clock(need)}) exceeds the {clock(max(left, 0))} left")
    return "from-scratch run skipped: " + "; ".join(parts), False


def _val_acc(task, result: ImageResult) -> float:
    y_val = np.array([y for _, y in task.val_items])
    if result.predictions is not None and result.predictions[0] is not None:
        return float(np.mean(np.asarray(result.predictions[0]) == y_val))
    return max((h["val_acc"] for h in result.history), default=0.0)


def _run_scratch(task, current: ImageResult) -> ImageResult:
    """Train the whole network from random weights (head and backbone at the head's rate);
    keep it only when it validates above `current`."""
    import dataclasses

    from .tune_full import build_finetune_model, finetune

    config = dataclasses.replace(task.config, lr_backbone=task.config.lr_head)
    model = build_finetune_model(
        task.backbone,
        task.n_classes,
        None,
        False,
        task.weights,
        task.allow_download,
        seed=config.seed,
    )

    def callback(record: dict) -> bool:
        return task.deadline is not None and time.monotonic() + record["seconds"] > task.deadline

    prep = task.input_preprocessing or task.backbone.preprocessing
    result = finetune(
        model,
        task.train_items,
        task.val_items,
        task.n_classes,
        prep,
        config,
        task.checkpoint_dir / "scratch",
        task.resume,
        task.console,
        callback,
    )
    mine = max(h["val_acc"] for h in result.history)
    theirs = _val_acc(task, current)
    note = f"trained from random initialisation: best validation accuracy {mine:.4f}"
    if mine > theirs:
        kept = f"kept the from-scratch model ({mine:.4f} vs {theirs:.4f})"
        notes = current.notes + [note, kept]
        return ImageResult(
            result.model,
            result.best_epoch,
            result.history,
            notes,
            "scratch",
            None,
            prep,
            current.ran,
        )
    current.notes += [note, f"kept the {current.kept} model ({theirs:.4f} vs {mine:.4f})"]
    return current


def _run_partial(task, choice: dict) -> ImageResult:
    warm, console = task.warm_start, task.console
    spec, prep = task.backbone, task.backbone.preprocessing
    after = choice["after"]
    rows_train, rows_val, rows_test = task.map_rows(after)
    y_train = np.array([y for _, y in task.train_items])
    y_val = np.array([y for _, y in task.val_items])
    top = warm.top(spec, task.net, after)
    epochs = choice["epochs"]
    if task.deadline is not None:
        left = task.deadline - time.monotonic()
        epochs = max(1, min(epochs, int(left // max(choice["seconds_per_epoch"], 1e-9))))
    # A trial only when the engine chose; a mode the user named runs its epochs.
    trial = PartialConfig.trial_z if task.mode == "auto" else -math.inf
    config = PartialConfig(epochs=epochs, seed=task.seed, trial_z=trial)
    res = train_top(
        top,
        rows_train,
        y_train,
        rows_val,
        y_val,
        task.n_classes,
        config,
        console,
        task.deadline,
        checkpoint=task.checkpoint_dir / "partial" / PARTIAL_CHECKPOINT,
        resume=task.resume,
    )
    if res.best_epoch == 0:
        return _frozen(task, res.history, res.notes)
    model = ExportModel(warm.extractor(top.net, prep), top.head).eval()
    test_pred = predict_maps(top, rows_test) if rows_test is not None else None
    notes = [f"fine-tuned {choice['stages']} from the frozen head"] + res.notes
    preds = (res.val_pred, test_pred)
    return ImageResult(model, res.best_epoch, res.history, notes, "partial", preds)


def _full_input(task) -> tuple:
    """(input preprocessing, warm start) of full fine-tuning: the smaller input chosen for
    small images with the warm start refitted at it, else the backbone's own and the frozen
    choice itself."""
    own, warm = task.backbone.preprocessing, task.warm_start
    prep = task.input_preprocessing
    if prep is None or prep == own or task.rewarm is None:
        return own, warm
    size = f"{prep.crop_size}x{prep.crop_size}"
    task.console.note(f"fine-tune: refitting the warm start '{warm.view}' on {size} features")
    start = task.rewarm(prep, warm.view)
    if start is None:
        task.console.note(
            f"fine-tune: view '{warm.view}' has no equal at {size} (its grid is larger than "
            f"the stage's map there): fine-tuning at {own.crop_size}x{own.crop_size}"
        )
        return own, warm
    task.console.note(
        f"fine-tune: warm start at {size}: validation {start.val_acc:.4f} (at "
        f"{own.crop_size}x{own.crop_size}: {warm.val_acc:.4f}, the bar to beat)"
    )
    return prep, start


def _run_full(task, choice: dict) -> ImageResult:
    """Full fine-tuning on images (automl_tl.train.tune_full), warm-started from the frozen head."""
    import copy

    from .tune_full import finetune

    warm, console = task.warm_start, task.console
    prep, start = _full_input(task)
    net = copy.deepcopy(task.net)
    model = ExportModel(start.extractor(net, prep), copy.deepcopy(start.head))
    config = warm_config(task.config)
    # the bar is the frozen choice as chosen (at the backbone's own input), whatever the
    # input fine-tuning runs at
    se = standard_error(warm.val_acc, len(task.val_items))

    def callback(record: dict) -> bool:
        trial = task.mode == "auto" and record["epoch"] == 1
        if trial and not _accept(record["val_acc"], warm.val_acc, se, 1.0):
            stop_notes.append(
                f"trial epoch: validation {record['val_acc']:.4f} vs warm start "
                f"{warm.val_acc:.4f} (noise {se:.4f}): not worth going on"
            )
            return True
        if task.deadline is not None and time.monotonic() + record["seconds"] > task.deadline:
            stop_notes.append(
                f"stopped after epoch {record['epoch']}: one more ({record['seconds']:.0f}s) "
                "would pass the time budget"
            )
            return True
        return False

    stop_notes: list[str] = []
    result = finetune(
        model,
        task.train_items,
        task.val_items,
        task.n_classes,
        prep,
        config,
        task.checkpoint_dir / "pretrained",
        task.resume,
        console,
        callback,
    )
    best = max(result.history, key=lambda h: (h["val_acc"], -h["val_loss"]))
    if _accept(best["val_acc"], warm.val_acc, se, 1.645):
        return ImageResult(
            result.model,
            result.best_epoch,
            result.history,
            [
                f"fine-tuned the whole network from the frozen head: best validation accuracy "
                f"{best['val_acc']:.4f} at epoch {result.best_epoch} (warm start "
                f"{warm.val_acc:.4f})",
                *stop_notes,
            ],
            "full",
            preprocessing=prep,
        )
    notes = stop_notes + [
        f"kept the warm start (the frozen head): best fine-tuned validation {best['val_acc']:.4f}"
        f" vs {warm.val_acc:.4f} does not beat it by 1.645 x SE {se:.4f}"
    ]
    return _frozen(task, result.history, notes)

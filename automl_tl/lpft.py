"""Warm-started fine-tuning on a time budget: what the fine-tuning cases (3 and 4) run.

1. The frozen choice (cases 1/2, measured on cached features in seconds) is both the warm
   start and the fallback: every fine-tuning candidate starts from its head (linear probe,
   then fine-tune) and replaces it only when it validates better by more than the noise.
2. Before anything long starts, each candidate's wall time is estimated from throughput
   measured on this machine (a few real training steps each): fine-tuning the top k stages
   on cached maps (`automl_tl.partial`, k = 1..3 stages below the lowest stage the frozen
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
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ._extractor import FeatureExtractor
from .candidates import standard_error
from .console import Console
from .export import ExportModel
from .partial import (
    PartialConfig,
    map_shape,
    map_view,
    predict_maps,
    step_rate,
    top_model,
    train_top,
    trains_from_maps,
)

__all__ = [
    "DEFAULT_TIME_BUDGET",
    "MIN_EPOCHS",
    "WarmStart",
    "estimate_candidates",
    "warm_config",
    "map_cap_bytes",
    "warm_finetune",
]

DEFAULT_TIME_BUDGET = 1200.0  # seconds, analysis to export, when --time-budget is not given
MIN_EPOCHS = 2  # a candidate must fit this many epochs (the trial and one more)
SCRATCH_EPOCHS = 30  # training from random weights needs many more epochs than fine-tuning
PARTIAL_DEPTHS = (1, 2, 3)  # stages below the frozen head's lowest, trained on cached maps
MAP_CAP_ENV = "AUTOML_TL_MAP_CACHE_GB"
DEFAULT_MAP_CAP_GB = 4.0
FULL_MEASURE_BATCH = 16
FULL_MEASURE_STEPS = 2
PARTIAL_CHECKPOINT = "partial.pt"


def map_cap_bytes() -> float:
    """Largest store of cached maps one fit may create: $AUTOML_TL_MAP_CACHE_GB (default 4)."""
    text = os.environ.get(MAP_CAP_ENV, "").strip()
    try:
        gb = float(text) if text else DEFAULT_MAP_CAP_GB
    except ValueError:
        gb = DEFAULT_MAP_CAP_GB
    return max(gb, 0.0) * 1e9


@dataclass
class WarmStart:
    """The frozen choice a fine-tuning run starts from and falls back to."""

    head: torch.nn.Module  # logistic regression on the view (a LinearHead)
    view: str
    stage_index: int
    grid: int
    val_acc: float
    val_pred: np.ndarray
    test_pred: np.ndarray | None = None
    parts: tuple[tuple[int, int], ...] = ()  # a joined view's members; () for one stage

    @property
    def lowest(self) -> int:
        """The lowest stage the head reads: fine-tuning from maps starts below it."""
        return min(i for i, _ in self.parts) if self.parts else self.stage_index

    def extractor(self, net, preprocessing) -> FeatureExtractor:
        """`net` up to the frozen choice's stage(s), pooled as the head expects."""
        return FeatureExtractor(net, preprocessing, self.stage_index, self.grid, parts=self.parts)

    def top(self, spec, net, after: int):
        """The stages above `after` and this head, trained from stage `after`'s cached maps."""
        return top_model(spec, net, after, self.stage_index, self.grid, self.head, self.parts)


@dataclass
class WarmResult:
    """What a warm-started fine-tuning strategy returns (the images-kind contract, plus the
    predictions made from cached maps and which candidate was kept)."""

    model: ExportModel
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: str = "frozen"
    predictions: tuple | None = None  # (validation, test) predicted classes, when known
    # The input the model was trained at when it is not the backbone's own (full fine-tuning
    # of small images, imagedata.choose_input): evaluation and export use it.
    preprocessing: object = None


def _row_bytes(width: int, dtype: str) -> int:
    return width * (1 if dtype == "int8" else 2) + (4 if dtype == "int8" else 0)


def _full_rate(net, warm: WarmStart, prep) -> float:
    """Measured training images per second of the whole network at input `prep`, stepped as
    warm fine-tuning steps it (channels_last, BatchNorm statistics frozen, AdamW): one
    warm-up step, then the fastest of `FULL_MEASURE_STEPS`. (A batch of 8 in NCHW with
    BatchNorm updating measured 25-38 img/s at 128 px where training ran at 68: mnist's
    estimate then left out fine-tuning that fitted the budget.)"""
    import copy

    model = ExportModel(warm.extractor(copy.deepcopy(net), prep), copy.deepcopy(warm.head))
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    model = model.to(memory_format=torch.channels_last)
    size = prep.crop_size
    x = torch.rand(FULL_MEASURE_BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times = []
    for _ in range(FULL_MEASURE_STEPS + 1):
        t0 = time.perf_counter()
        loss = model(x).logsumexp(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return FULL_MEASURE_BATCH / max(min(times[1:]), 1e-9)


def estimate_candidates(
    spec,
    net,
    warm: WarmStart,
    n_train: int,
    n_val: int,
    n_maps: int,
    embed_rate: float,
    remaining: float,
    dtype: str = "fp16",
    epochs: int = PartialConfig.epochs,
    full_epochs: int = 10,
    scratch: bool = False,
    console: Console | None = None,
    maps_missing=None,
    full_preprocessing=None,
    rewarm_missing=None,
) -> list[dict]:
    """Each candidate's estimated wall time on this machine, from measured throughput, its
    expected accuracy with the basis, and whether it fits `remaining` seconds; in order of
    preference (most stages trained first), the frozen choice last.

    `embed_rate` is images/s of the frozen graph (this run's embedding, when it computed
    any); `maps_missing(after)`, when given, counts the images whose maps of stage `after`
    are not cached yet (only those are embedded). `full_preprocessing` is the input of
    full fine-tuning and training from scratch when it is smaller than the backbone's own:
    their rate is measured at it, and full fine-tuning first refits the warm start on the
    view embedded at that size (setup: the frozen graph's rate scaled by the pixel ratio, for
    the `rewarm_missing()` train + validation images not cached at that size yet; all of them
    when not given)."""
    console = console or Console(quiet=True)
    own = spec.preprocessing
    small = full_preprocessing or own
    resized = small.crop_size != own.crop_size
    cut, out = warm.stage_index, []
    band = 1.96 * standard_error(warm.val_acc, n_val)
    frozen_low = round(max(0.0, warm.val_acc - band), 4)
    at_least = {
        "low": frozen_low,
        "high": 1.0,
        "basis": "starts from the frozen head and is kept only if it validates better: at "
        "least the frozen choice's band",
    }
    with console.progress("measure", 1 + len(PARTIAL_DEPTHS), unit="candidate") as bar:
        per_image = 1.0 / _full_rate(net, warm, small)
        bar.update()
        # forward + backward per training image, forward alone (a third) per validation image
        full_epoch = per_image * (n_train + n_val / 3)
        # the warm start refitted at the smaller input: train and validation embedded again
        pixels = (own.crop_size / small.crop_size) ** 2
        todo = (rewarm_missing() if rewarm_missing else n_train + n_val) if resized else 0
        rewarm = todo / max(embed_rate * pixels, 1e-9)
        for kind, n_epochs in (("full", full_epochs), ("scratch", SCRATCH_EPOCHS)):
            if kind == "scratch" and not scratch:
                continue
            setup = rewarm if kind == "full" else 0.0
            seconds = setup + n_epochs * full_epoch
            at = f" at {small.crop_size}x{small.crop_size}" if resized else ""
            out.append(
                {
                    "candidate": kind,
                    "kind": kind,
                    "stages": f"{spec.stages[0].name}..{spec.stages[cut].name}{at}",
                    "seconds_per_epoch": round(full_epoch, 1),
                    "setup_seconds": round(setup, 1),
                    "epochs": n_epochs,
                    "seconds": round(seconds, 1),
                    "input_size": small.crop_size,
                    "fits": setup + MIN_EPOCHS * full_epoch <= remaining,
                    "expected": at_least
                    if kind == "full"
                    else {
                        "low": 0.0,
                        "high": 1.0,
                        "basis": "random initialisation: no measurement predicts it",
                    },
                }
            )
        for k in sorted(PARTIAL_DEPTHS, reverse=True):
            after = warm.lowest - k
            if after < 0 or not trains_from_maps(net):
                bar.update()
                continue
            view = map_view(spec, after)
            top = warm.top(spec, net, after)
            top.trained_parameters(top.shape)
            rate = step_rate(top, top.shape)
            bar.update()
            store = n_maps * _row_bytes(view.width, dtype)
            epoch_s = (n_train + n_val / 3) / rate
            todo = n_maps if maps_missing is None else maps_missing(after)
            setup = todo / max(embed_rate, 1e-9)
            fits_cap = store <= map_cap_bytes()
            out.append(
                {
                    "candidate": f"partial k={k}",
                    "kind": "partial",
                    "after": after,
                    "stages": f"{spec.stages[after + 1].name}..{spec.stages[cut].name} on "
                    f"cached {spec.stages[after].name} maps {map_shape(spec, after)}",
                    "seconds_per_epoch": round(epoch_s, 1),
                    "setup_seconds": round(setup, 1),
                    "epochs": epochs,
                    "seconds": round(setup + epochs * epoch_s, 1),
                    "map_store_mb": round(store / 1e6, 1),
                    "fits": fits_cap and setup + MIN_EPOCHS * epoch_s <= remaining,
                    "expected": at_least,
                    **(
                        {}
                        if fits_cap
                        else {
                            "why_not": f"its maps need {store / 1e9:.1f} GB, over the cap of "
                            f"{map_cap_bytes() / 1e9:.1f} GB (${MAP_CAP_ENV})"
                        }
                    ),
                }
            )
    out.append(
        {
            "candidate": f"frozen {warm.view}",
            "kind": "frozen",
            "seconds": 0.0,
            "fits": True,
            "expected": {
                "low": frozen_low,
                "high": round(min(1.0, warm.val_acc + band), 4),
                "basis": f"measured: 95% interval of the frozen head's validation accuracy on "
                f"{n_val} images",
            },
        }
    )
    return out


def describe(estimates: list[dict]) -> list[str]:
    """One line per candidate for the plan's reasons and the console."""
    lines = []
    for e in estimates:
        ex = e["expected"]
        if e["kind"] == "frozen":
            cost = "done"
        else:
            per = e["seconds_per_epoch"]
            each = f"{per:.1f}s" if per < 10 else _clock(per)
            cost = f"~{_clock(e['seconds'])} ({e['epochs']} epochs x {each}"
            setup = "caching maps" if e["kind"] == "partial" else "refitting the warm start"
            cost += f" + {e['setup_seconds']:.0f}s {setup})" if e.get("setup_seconds") else ")"
        fits = ""
        if not e["fits"]:
            fits = " - does not fit" + (f": {e['why_not']}" if "why_not" in e else "")
        lines.append(
            f"estimate: {e['candidate']}: {cost}; expected accuracy {ex['low']:.3f}-"
            f"{ex['high']:.3f} ({ex['basis']}){fits}"
        )
    return lines


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m{seconds % 60:02d}s"


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


def _frozen(task, history: list[dict], notes: list[str]) -> WarmResult:
    """The frozen choice as the kept model: the caller's network up to the cut, its head."""
    warm, prep = task.warm_start, task.backbone.preprocessing
    model = ExportModel(warm.extractor(task.net, prep), warm.head)
    return WarmResult(model.eval(), 0, history, notes, "frozen", (warm.val_pred, warm.test_pred))


def warm_finetune(task, allow_scratch: bool) -> WarmResult:
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
                f" ({_clock(max(left, 0))} left; the cheapest, {cheapest['candidate']}, needs "
                f"{_clock(cheapest['setup_seconds'] + MIN_EPOCHS * cheapest['seconds_per_epoch'])}"
                f" for {MIN_EPOCHS} epochs)"
            )
        frozen_result.notes.append(f"{why}: kept the frozen choice '{warm.view}'")
        return frozen_result
    choice["ran"] = True
    console.note(f"fine-tune: {choice['candidate']}: {choice['stages']}")
    if choice["kind"] == "partial":
        result = _run_partial(task, choice)
    else:
        result = _run_full(task, choice)
    if allow_scratch:
        verdict, go = _scratch_verdict(task)
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
            f"pretrained deep features do not carry over) and its estimate ({_clock(need)}) "
            f"fits the {_clock(left)} left"
        ), True
    parts = []
    if not early:
        parts.append(
            f"the frozen choice peaked at '{spec.stages[warm.stage_index].name}' (stride "
            f"{stride} > 8): the pretrained features carry over"
        )
    if need > left:
        parts.append(f"its estimate ({_clock(need)}) exceeds the {_clock(max(left, 0))} left")
    return "from-scratch run skipped: " + "; ".join(parts), False


def _val_acc(task, result: WarmResult) -> float:
    y_val = np.array([y for _, y in task.val_items])
    if result.predictions is not None and result.predictions[0] is not None:
        return float(np.mean(np.asarray(result.predictions[0]) == y_val))
    return max((h["val_acc"] for h in result.history), default=0.0)


def _run_scratch(task, current: WarmResult) -> WarmResult:
    """Train the whole network from random weights (head and backbone at the head's rate);
    keep it only when it validates above `current`."""
    import dataclasses

    from .finetune import build_finetune_model, finetune

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
        return WarmResult(
            result.model, result.best_epoch, result.history, notes, "scratch", None, prep
        )
    current.notes += [note, f"kept the {current.kept} model ({theirs:.4f} vs {mine:.4f})"]
    return current


def _run_partial(task, choice: dict) -> WarmResult:
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
    return WarmResult(model, res.best_epoch, res.history, notes, "partial", preds)


def warm_config(config):
    """The fine-tuning configuration of a run that starts from the frozen head (LP-FT).

    - The head is warm, so it learns at the backbone's rate, not 10x it.
    - BatchNorm statistics stay as the head was fitted with them.
    - No label smoothing: the head was fitted on the plain cross-entropy, and its logits are
      confident (chest_xray: mean margin 12). Under smoothing 0.1 its training loss starts at
      1.03 instead of 0.003, and the first epoch goes into shrinking logits through the
      backbone.
    - No augmentation: the head was fitted on features of the evaluation crop. The standard
      crops (35-100% of the area) and flips move what each cell of a pooled grid sees, so
      the warm head starts far from its optimum on them. A gentle policy (crops of 75-100%
      near square, no flip; imagedata.AUGMENTS["gentle"]) was measured too and is not better
      on the full datasets, though without augmentation the head already fits the training
      set (training loss 0.006-0.009) and the backbone gets little signal.

    chest_xray, frozen head block2@4x4+block3@4x4+block4@4x4 at validation 0.9855, one epoch
    of full fine-tuning at 1e-4: standard augmentation with smoothing 0.9528, without
    smoothing 0.9586; no augmentation, smoothing 0.9306; no augmentation, no smoothing
    **0.9865** (training loss 0.009, against 0.44-1.4); gentle, no smoothing 0.9836. mnist,
    16,000 training images at 128 px, the trial epoch: none 0.9860, gentle 0.9815 (warm
    start 0.9930). Only on a 250-per-class subset of mnist did gentle lead (epochs 1 / 2:
    none 0.946 / 0.985, standard 0.933 / 0.976, gentle 0.974 / 0.991; docs/finetuning.md).
    Overfitting over later epochs is left to the validation split: an epoch is kept only
    when it beats the frozen head beyond the noise.
    """
    import dataclasses

    return dataclasses.replace(
        config,
        lr_head=config.lr_backbone,
        freeze_batchnorm=True,
        label_smoothing=0.0,
        augment=False,
    )


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


def _run_full(task, choice: dict) -> WarmResult:
    """Full fine-tuning on images (automl_tl.finetune), warm-started from the frozen head."""
    import copy

    from .finetune import finetune

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
        return WarmResult(
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

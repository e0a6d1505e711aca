"""Running the chosen strategy: the task it is handed (a HeadTask of cached features for the
frozen cases, an ImageTask with the warm start, the estimates and the budget for fine-tuning)
and what comes back, as a `Trained` model with its predictions on every split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.tasks import HeadConfig, HeadTask, ImageTask
from ..data.preprocess import Preprocessing
from .model import ExportModel, predict_files
from .tune_full import FinetuneConfig
from .tune_top_model import map_view

__all__ = ["Trained", "fit_frozen", "fine_tune", "kept_spec"]


@dataclass
class Trained:
    """The kept model and what is known of it: the input it takes, its training history and
    notes, its predicted classes on (train or None, validation, test), which candidate it is
    ("frozen", "partial", "full", "scratch"; "" for a frozen strategy) and the map cache's
    statistics when it trained on cached maps."""

    model: ExportModel
    preprocessing: Preprocessing
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    predictions: tuple = (None, np.zeros(0, np.int64), np.zeros(0, np.int64))
    kept: str = ""
    map_cache: dict | None = None
    ran: str = ""  # the fine-tuning candidate that ran (its name among the estimates)


def _view_parts(spec, plan) -> tuple[tuple[int, int], ...]:
    """The plan's joined-view members as (stage index, grid) pairs; () for one stage."""
    return tuple((spec.stage_index(n), int(g)) for n, g in plan.parts)


def fit_frozen(strategy, features, plan, data, config: HeadConfig, console, fitted=None):
    """Frozen backbone: the chosen view's rows from the feature cache, handed to the strategy
    as stored rows and as float32 arrays (and `fitted`, the view choice's head on those rows,
    when it has one). Returns a Trained model: the backbone up to the cut, then the head."""
    spec = features.spec
    prep = spec.preprocessing
    cut = spec.stage_index(plan.cut)
    # the feature cache's extractor (a pair of backbones gives both, side by side)
    extractor = features.head_extractor(cut, plan.grid, _view_parts(spec, plan))
    everything = data.everything
    rows = features.rows(everything, plan.view or plan.cut)
    n_tr, n_va = len(data.train), len(data.val)
    y = data.labels(everything)
    rows_train = rows.subset(np.arange(n_tr))
    rows_val = rows.subset(np.arange(n_tr, n_tr + n_va))
    task = HeadTask(
        np.asarray(rows_train),
        y[:n_tr],
        np.asarray(rows_val),
        y[n_tr : n_tr + n_va],
        len(data.classes),
        config,
        console,
        rows_train,
        rows_val,
        fitted,
    )
    result = strategy.fit(task)
    head = result.head.eval()
    with torch.no_grad():  # in chunks: a head may build (rows x training set) matrices
        pred = np.concatenate(
            [
                head(rows.dequantize(torch.from_numpy(c))).argmax(1).numpy()
                for c in np.array_split(np.arange(len(rows)), max(1, len(rows) // 4096))
            ]
        )
    return Trained(
        ExportModel(extractor, head).eval(),
        prep,
        result.best_epoch,
        result.history,
        list(getattr(result, "notes", [])),
        (pred[:n_tr], pred[n_tr : n_tr + n_va], pred[n_tr + n_va :]),
    )


def _map_rows(features, data, stats: dict):
    """after -> stored maps of stage `after` for (train, val, test), cached by content. The
    map cache is filled collectively (every rank runs the same candidate)."""
    spec, parts = features.spec, data.parts

    def rows(after: int):
        view = map_view(spec, after)
        maps = features.sibling(views=[view])
        maps.ensure(data.everything)
        got = tuple(maps.rows(part, view.name) if part else None for part in parts)
        stats.update(maps.stats.to_dict())
        return got

    return rows


def fine_tune(strategy, settings, net, features, plan, data, context: dict, checkpoints: Path):
    """Fine-tuning strategies: images in (and cached maps), checkpoints in `checkpoints`,
    warm-started from the frozen choice. `context` holds the warm start, the estimates, the
    deadline, the input of full fine-tuning and the rewarm function."""
    console, spec = features.console, features.spec
    if not settings.resume and checkpoints.is_dir():
        console.note(
            f"'{checkpoints.parent}' holds the checkpoints of an interrupted run; fine-tuning "
            "from the start (add --resume to continue it)"
        )
    map_stats: dict = {}
    task = ImageTask(
        backbone=spec,
        train_items=list(zip([s.path for s in data.train], data.labels(data.train), strict=True)),
        val_items=list(zip([s.path for s in data.val], data.labels(data.val), strict=True)),
        n_classes=len(data.classes),
        cut=plan.cut,
        config=FinetuneConfig(epochs=settings.finetune_epochs, seed=settings.seed),
        checkpoint_dir=checkpoints,
        resume=settings.resume,
        console=console,
        weights=settings.weights,
        allow_download=settings.allow_download,
        time_budget=settings.time_budget,
        net=net,
        warm_start=context["warm"],
        estimates=context["estimates"],
        map_rows=_map_rows(features, data, map_stats),
        deadline=context["deadline"],
        mode=settings.finetune,
        seed=settings.seed,
        input_preprocessing=context["tuning"],
        rewarm=context["rewarm"],
    )
    result = strategy.fit(task)
    prep = getattr(result, "preprocessing", None) or spec.preprocessing
    notes = list(getattr(result, "notes", []))
    for note in notes:
        console.note(f"train: {note}")
    model = result.model.eval()
    known = getattr(result, "predictions", None)
    if known is not None and known[0] is not None and (known[1] is not None or not data.test):
        preds = (None, np.asarray(known[0]), np.asarray(known[1]))
    else:
        n = len(data.classes)

        def predict(samples):
            if not samples:
                return np.zeros(0, dtype=np.int64)
            paths = [s.path for s in samples]
            return predict_files(model, paths, prep, n, settings.batch_size or 32).argmax(1)

        preds = (None, predict(data.val), predict(data.test))
    kept = getattr(result, "kept", None) or ""
    ran = getattr(result, "ran", "") or ""
    return Trained(
        model, prep, result.best_epoch, result.history, notes, preds, kept, map_stats or None, ran
    )


def kept_spec(spec, trained: Trained):
    """The backbone spec at the input the kept model takes (its own unless fine-tuning at a
    smaller input was kept)."""
    if trained.preprocessing == spec.preprocessing:
        return spec
    return dataclasses.replace(spec, preprocessing=trained.preprocessing)

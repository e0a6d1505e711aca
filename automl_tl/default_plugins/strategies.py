"""Built-in strategies, registered through the same hook as third-party ones.

Training code (torch) is imported when a strategy runs, so importing this module is cheap."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..strategy import HeadTask, ImageTask
    from ..train import TrainResult


def _linear_head(task: HeadTask) -> TrainResult:
    """L2-regularised logistic regression solved exactly, its strength chosen on validation
    (automl_tl.logreg): the tuned linear head, without epochs or a learning rate."""
    from ..logreg import fit_logreg, logreg_result

    result = fit_logreg(
        task.rows_train if task.rows_train is not None else task.x_train,
        task.y_train,
        task.rows_val if task.rows_val is not None else task.x_val,
        task.y_val,
        task.n_classes,
        console=task.console,
    )
    return logreg_result(result)


def _finetune_from(task: ImageTask, pretrained: bool, config):
    from ..finetune import build_finetune_model, finetune

    model = build_finetune_model(
        task.backbone,
        task.n_classes,
        task.cut,
        pretrained,
        task.weights,
        task.allow_download,
        seed=config.seed,
    )
    folder = task.checkpoint_dir / ("pretrained" if pretrained else "scratch")
    return finetune(
        model,
        task.train_items,
        task.val_items,
        task.n_classes,
        task.backbone.preprocessing,
        config,
        folder,
        task.resume,
        task.console,
    )


def _best_val(result) -> float:
    return result.history[result.best_epoch - 1]["val_acc"]


def _finetune(task: ImageTask):
    result = _finetune_from(task, True, task.config)
    result.notes = [
        f"fine-tuned from pretrained weights: best validation accuracy "
        f"{_best_val(result):.4f} at epoch {result.best_epoch}"
    ]
    return result


def _finetune_or_scratch(task: ImageTask):
    """Case 4: fine-tune from pretrained weights; when the budget allows, also train from
    random initialisation (head and backbone at the head's learning rate); keep the better."""
    t0 = time.perf_counter()
    pre = _finetune(task)
    spent = time.perf_counter() - t0
    if task.time_budget is not None and 2 * spent > task.time_budget:
        pre.notes.append(
            f"from-scratch run skipped: the pretrained run took {spent:.0f}s and a second one "
            f"would exceed the time budget of {task.time_budget:.0f}s"
        )
        return pre
    cfg = dataclasses.replace(task.config, lr_backbone=task.config.lr_head)
    scratch = _finetune_from(task, False, cfg)
    a, b = _best_val(pre), _best_val(scratch)
    kept = scratch if b > a else pre
    kept.notes = pre.notes + [
        f"trained from random initialisation: best validation accuracy {b:.4f}",
        f"kept the {'from-scratch' if kept is scratch else 'pretrained'} model "
        f"({max(a, b):.4f} vs {min(a, b):.4f})",
    ]
    return kept


@hookimpl
def register_strategies(register):
    """Register the built-in cases 1-4."""
    from ..strategy import StrategySpec

    register(
        StrategySpec(
            name="linear_head",
            description="freeze the backbone, train a linear head on the last stage, pooled",
            fit=_linear_head,
            case=1,
        )
    )
    register(
        StrategySpec(
            name="cut_head",
            description="cut the frozen backbone at the stage and pooling grid whose head "
            "validates best, train a linear head there",
            fit=_linear_head,
            case=2,
        )
    )
    register(
        StrategySpec(
            name="finetune",
            description="new head; fine-tune the whole network from pretrained weights",
            fit=_finetune,
            case=3,
            kind="images",
        )
    )
    register(
        StrategySpec(
            name="finetune_or_scratch",
            description="new head; fine-tune from pretrained weights and from random "
            "initialisation (budget permitting), keep what validates better",
            fit=_finetune_or_scratch,
            case=4,
            kind="images",
        )
    )

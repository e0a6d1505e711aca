"""Built-in strategies, registered through the same hook as third-party ones.

Training code (torch) is imported when a strategy runs, so importing this module is cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ...core.tasks import HeadTask, ImageTask, TrainResult


def _linear_head(task: HeadTask) -> TrainResult:
    """L2-regularised logistic regression solved exactly, its strength chosen on validation
    (automl_tl.train.logreg): the tuned linear head, without epochs or a learning rate."""
    from ...train.logreg import fit_logreg, logreg_result

    if task.fitted is not None:  # the view choice fitted this very head already
        return logreg_result(task.fitted)
    result = fit_logreg(
        task.rows_train if task.rows_train is not None else task.x_train,
        task.y_train,
        task.rows_val if task.rows_val is not None else task.x_val,
        task.y_val,
        task.n_classes,
        console=task.console,
    )
    return logreg_result(result)


def _finetune(task: ImageTask):
    """Case 3: warm-started fine-tuning within the budget (automl_tl.train.tune)."""
    from ...train.tune import warm_finetune

    return warm_finetune(task, allow_scratch=False)


def _finetune_or_scratch(task: ImageTask):
    """Case 4: as case 3, then from random weights when the evidence and the budget allow."""
    from ...train.tune import warm_finetune

    return warm_finetune(task, allow_scratch=True)


@hookimpl
def register_strategies(register):
    """Register the built-in cases 1-4."""
    from ...core.contract import StrategySpec

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
            description="start from the frozen choice's head; fine-tune the top stages on "
            "cached maps, or the whole network, as the measured estimates fit the budget",
            fit=_finetune,
            case=3,
            kind="images",
        )
    )
    register(
        StrategySpec(
            name="finetune_or_scratch",
            description="as finetune; then from random initialisation when the frozen "
            "choice peaked early and the budget allows; keep what validates better",
            fit=_finetune_or_scratch,
            case=4,
            kind="images",
        )
    )

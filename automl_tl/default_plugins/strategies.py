"""Built-in strategies, registered through the same hook as third-party ones."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..strategy import HeadTask, StrategySpec
from ..train import TrainResult, train_head


def _linear_head(task: HeadTask) -> TrainResult:
    return train_head(
        task.x_train,
        task.y_train,
        task.x_val,
        task.y_val,
        task.n_classes,
        task.config,
        task.console,
    )


@hookimpl
def register_strategies(register):
    """Register case 1: a new linear head on frozen backbone features."""
    register(
        StrategySpec(
            name="linear_head",
            description="freeze the backbone, train a new linear head on its pooled features",
            fit=_linear_head,
            case=1,
        )
    )

"""The strategy contract: how a plugin turns cached frozen features into a trained head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .console import Console
from .train import HeadConfig, TrainResult

__all__ = ["StrategySpec", "HeadTask"]


@dataclass
class HeadTask:
    """What a feature-based strategy gets: cached features of the chosen cut point
    (train and validation), integer labels, the class count and the planned config."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    config: HeadConfig
    console: Console


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy plugin registers.

    `fit(task)` returns a TrainResult whose `head` is a torch module mapping pooled
    features (N, width) to class logits (N, n_classes); it must be traceable by
    torch.onnx.export, since it becomes part of the exported graph. `case` names the
    planner case (1-4) the strategy implements, or None for a strategy chosen only by
    name (`--strategy`) or by a `select_strategy` hook.
    """

    name: str
    description: str
    fit: Callable[[HeadTask], TrainResult]
    case: int | None = None

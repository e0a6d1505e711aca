"""The strategy contract: how a plugin turns cached frozen features into a trained head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbone import BackboneSpec
from .console import Console
from .train import HeadConfig, TrainResult

__all__ = ["StrategySpec", "HeadTask", "ImageTask"]


@dataclass
class HeadTask:
    """What a feature-based strategy gets: cached features of the chosen cut point
    (train and validation) as float32 arrays, integer labels, the class count and the planned
    config. `rows_train` / `rows_val`, when set, are the same rows as the feature cache stores
    them (float16, or int8 + scale), for strategies that gather batches with automl_tl.ops."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    config: HeadConfig
    console: Console
    rows_train: object = None
    rows_val: object = None
    # The logistic regression the view choice already fitted on exactly these rows and
    # labels (automl_tl.logreg's defaults), or None; a strategy that would fit the same
    # head may return it instead of fitting again.
    fitted: object = None


@dataclass
class ImageTask:
    """What an image-based (fine-tuning) strategy gets: the backbone, (path, label index)
    pairs, the planned cut, the fine-tuning config and where to checkpoint."""

    backbone: BackboneSpec
    train_items: list[tuple[Path, int]]
    val_items: list[tuple[Path, int]]
    n_classes: int
    cut: str
    config: object  # automl_tl.finetune.FinetuneConfig
    checkpoint_dir: Path
    resume: bool
    console: Console
    weights: str | None = None
    allow_download: bool = False
    time_budget: float | None = None
    # Warm-started fine-tuning (automl_tl.lpft): the built backbone network (left as it is),
    # the frozen choice to start from and fall back to (lpft.WarmStart), the plan's measured
    # estimates of each candidate, `map_rows(after)` -> stored maps of stage `after` for
    # (train, validation, test) (computed once, cached by content), the time.monotonic()
    # deadline, the mode ("auto", "partial", "full") and the seed.
    net: object = None
    warm_start: object = None
    estimates: list = field(default_factory=list)
    map_rows: Callable | None = None
    deadline: float | None = None
    mode: str = "auto"
    seed: int = 0
    # Full fine-tuning's input (imagedata.choose_input; None: the backbone's own) and
    # `rewarm(preprocessing, view)` -> the warm start refitted at that input, or None.
    input_preprocessing: object = None
    rewarm: Callable | None = None


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy plugin registers.

    kind "features": `fit(HeadTask)` returns a TrainResult whose `head` is a torch module
    mapping pooled features (N, width) to class logits (N, n_classes); it must be traceable
    by torch.onnx.export, since it becomes part of the exported graph. The backbone stays
    frozen and its features are computed once.
    kind "images": `fit(ImageTask)` returns an object with `.model` (an ExportModel:
    images -> logits), `.best_epoch`, `.history` and optionally `.notes` (list of str),
    `.kept` (which candidate the model is: "frozen", "partial", "full", "scratch") and
    `.predictions` ((validation, test) predicted classes, when it made them from cached maps).
    `case` names the planner case (1-4) the strategy implements, or None for a strategy
    chosen only by name (`--strategy`) or by a `select_strategy` hook.
    """

    name: str
    description: str
    fit: Callable[..., TrainResult]
    case: int | None = None
    kind: str = "features"

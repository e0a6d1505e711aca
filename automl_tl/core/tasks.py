"""The plugin contract, part two: what a strategy is given (HeadTask: frozen features;
ImageTask: images, the warm start, the estimates and the budget) and what it returns
(TrainResult, ImageResult), with the head's hyper-parameters (HeadConfig). Plain data types,
no torch or numpy imported."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from ..data.preprocess import Preprocessing
    from .console import Console
    from .contract import BackboneSpec

__all__ = ["HeadConfig", "TrainResult", "ImageResult", "HeadTask", "ImageTask"]


@dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters of head training."""

    epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int | None = None  # None: chosen from the training-set size
    # No input dropout by default: on cached features it cost 2.5x the training time
    # (a Bernoulli mask per value per step) for no validation gain (flowers5 0.746 without,
    # 0.742 with; hymenoptera 0.948 both). Weight decay and early stopping regularise.
    dropout: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    """What a "features" strategy returns: the head (a torch module, pooled features (N,
    width) -> logits (N, classes), traceable by torch.onnx.export), the epoch (or step) it
    came from, and the history of its training."""

    head: nn.Module
    best_epoch: int
    history: list[dict] = field(default_factory=list)


@dataclass
class ImageResult:
    """What an "images" strategy returns: the kept model (images -> logits, an
    automl_tl.train.model.ExportModel), its epoch and history, notes for the plan, which
    candidate it is ("frozen", "partial", "full", "scratch"), the (validation, test)
    predicted classes when it made them itself, and the input it was trained at when that
    is not the backbone's own (evaluation and export then use it), and which fine-tuning
    candidate ran (its name among the plan's estimates)."""

    model: nn.Module
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: str = "frozen"
    predictions: tuple | None = None
    preprocessing: Preprocessing | None = None
    ran: str = ""  # the estimate's name of the candidate that ran, "" when none did


@dataclass
class HeadTask:
    """What a "features" strategy gets: cached features of the chosen view (train and
    validation) as float32 arrays, integer labels, the class count and the planned config.
    `rows_train` / `rows_val` are the same rows as the feature cache stores them (float16, or
    int8 + scale), for strategies that gather batches with automl_tl.features.ops."""

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
    # labels (automl_tl.train.logreg's defaults), or None; a strategy that would fit the same
    # head may return it instead of fitting again.
    fitted: object = None


@dataclass
class ImageTask:
    """What an "images" (fine-tuning) strategy gets: the backbone, (path, label index)
    pairs, the planned cut, the fine-tuning config and where to checkpoint."""

    backbone: BackboneSpec
    train_items: list[tuple[Path, int]]
    val_items: list[tuple[Path, int]]
    n_classes: int
    cut: str
    config: object  # automl_tl.train.tune_full.FinetuneConfig
    checkpoint_dir: Path
    resume: bool
    console: Console
    weights: str | None = None
    allow_download: bool = False
    time_budget: float | None = None
    # Warm-started fine-tuning (automl_tl.train.tune): the built backbone network (left as
    # it is), the frozen choice to start from and fall back to (train.warm.WarmStart), the
    # plan's measured estimates of each candidate, `map_rows(after)` -> stored maps of stage
    # `after` for (train, validation, test) (computed once, cached by content), the
    # time.monotonic() deadline, the mode ("auto", "partial", "full") and the seed.
    net: object = None
    warm_start: object = None
    estimates: list = field(default_factory=list)
    map_rows: Callable | None = None
    deadline: float | None = None
    mode: str = "auto"
    seed: int = 0
    # Full fine-tuning's input (data.input_size.choose_input; None: the backbone's own) and
    # `rewarm(preprocessing, view)` -> the warm start refitted at that input, or None.
    input_preprocessing: object = None
    rewarm: Callable | None = None

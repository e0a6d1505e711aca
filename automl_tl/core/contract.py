"""The plugin contract: what a backbone or strategy plugin registers, what a strategy is given
and what it returns. Plain data types; importing this module imports neither torch nor numpy
(plugins are loaded to list their commands, and that must stay cheap).

Plugins import these names from `automl_tl.plugin`, the one public module for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import BackboneError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from ..data.preprocess import Preprocessing
    from .console import Console

__all__ = [
    "Stage",
    "BackboneSpec",
    "BackboneNet",
    "TrainsFromMaps",
    "HeadConfig",
    "TrainResult",
    "ImageResult",
    "HeadTask",
    "ImageTask",
    "StrategySpec",
    "STRATEGY_KINDS",
]


# ------------------------------------------------------------------------------ backbones
@dataclass(frozen=True)
class Stage:
    """A cut point: its name, feature width (channels) and stride relative to the input."""

    name: str
    width: int
    stride: int


@runtime_checkable
class BackboneNet(Protocol):
    """The network `BackboneSpec.build` returns (an nn.Module in eval mode).

    `forward_stages(x, upto)`: the NCHW feature maps of stages 0..upto, in order, for a
    normalised float NCHW batch. `classifier`: the source classifier (pooled last-stage
    features -> source-class logits), or None."""

    classifier: Any

    def forward_stages(self, x: Tensor, upto: int) -> Sequence[Tensor]: ...


@runtime_checkable
class TrainsFromMaps(Protocol):
    """Optional: a backbone that can run its top stages from a cached map. `forward_from(x,
    after, upto)` returns the maps of stages after+1..upto from `x`, the map of stage
    `after`; with it the top stages are fine-tuned on cached maps (automl_tl.train.tune_top),
    without it a backbone is fine-tuned whole."""

    def forward_from(self, x: Tensor, after: int, upto: int) -> Sequence[Tensor]: ...


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone plugin registers.

    `build(weights=None, pretrained=True, allow_download=False)` returns a `BackboneNet`
    (optionally also `TrainsFromMaps`). `weights` is a local weight file (state dict or
    safetensors) overriding the default ones; `pretrained=False` gives random initialisation
    (tests, training from scratch); `allow_download` lets the plugin fetch default weights
    that are not on disk. `weights_path()` is the default weight file when it is on disk,
    else None. `parameters`, when given, is the network's parameter count (what
    `automl-tl backbones` shows without building it; the contract test checks it).
    """

    name: str
    build: Callable[..., nn.Module]
    stages: tuple[Stage, ...]
    preprocessing: Preprocessing
    source_domain: str
    weights_path: Callable[[], Path | None] = field(default=lambda: None)
    description: str = ""
    parameters: int | None = None

    def stage_index(self, name: str) -> int:
        for i, st in enumerate(self.stages):
            if st.name == name:
                return i
        known = ", ".join(s.name for s in self.stages)
        raise BackboneError(f"backbone '{self.name}' has no stage '{name}'; stages: {known}")


# ----------------------------------------------------------------------------- strategies
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


STRATEGY_KINDS = ("features", "images")


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy plugin registers.

    kind "features": `fit(HeadTask)` returns a TrainResult. The backbone stays frozen and
    its features are computed once.
    kind "images": `fit(ImageTask)` returns an ImageResult (or an object with its
    attributes; only `model`, `best_epoch` and `history` are required).
    `case` names the planner case (1-4) the strategy implements, or None for a strategy
    chosen only by name (`--strategy`) or by a `select_strategy` hook.
    """

    name: str
    description: str
    fit: Callable[..., TrainResult | ImageResult]
    case: int | None = None
    kind: str = "features"

"""The plugin contract, part one: what a backbone or strategy plugin registers (BackboneSpec
with its Stages and the protocols of the network it builds, StrategySpec). What a strategy is
given and returns is in core.tasks. Plain data types; importing this module imports neither
torch nor numpy (plugins are loaded to list their commands, and that must stay cheap).

Plugins import these names from `automl_tl.plugin`, the one public module for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import BackboneError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..data.preprocess import Preprocessing
    from .tasks import ImageResult, TrainResult

__all__ = [
    "Stage",
    "BackboneSpec",
    "BackboneNet",
    "TrainsFromMaps",
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


STRATEGY_KINDS = ("features", "images")


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy plugin registers.

    kind "features": `fit(HeadTask)` returns a TrainResult (both in core.tasks). The backbone
    stays frozen and its features are computed once.
    kind "images": `fit(ImageTask)` returns an ImageResult (or an object with its
    attributes; only `model`, `best_epoch` and `history` are required).
    `case` names the planner case (1-4) the strategy implements, or None for a strategy
    chosen only by name (`--strategy`) or by a `select_strategy` hook.
    """

    name: str
    description: str
    fit: Callable[..., TrainResult | ImageResult]  # see core.tasks
    case: int | None = None
    kind: str = "features"

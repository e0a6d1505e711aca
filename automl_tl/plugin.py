"""Everything a plugin imports, from one module (it never imports torch itself).

    from automl_tl.plugin import hookimpl, BackboneSpec, Stage, StrategySpec, HeadTask

Hooks (automl_tl.plugins.hookspecs): `register_backbones(register)`,
`register_strategies(register)`, `register_commands(cli)`, `select_strategy(profile)`.
Backbones: `BackboneSpec` with its `Stage`s; the network it builds follows `BackboneNet`
(and optionally `TrainsFromMaps`); weights load safely with `load_state_dict_file` and are
found offline with `find_weights`. Strategies: `StrategySpec`, given a `HeadTask` (frozen
features) or an `ImageTask` (images), returning a `TrainResult` or an `ImageResult`.
`check_backbone(spec)` runs the contract test the built-in backbones pass.
"""

from __future__ import annotations

from .core.console import Console
from .core.contract import (
    STRATEGY_KINDS,
    BackboneNet,
    BackboneSpec,
    HeadConfig,
    HeadTask,
    ImageResult,
    ImageTask,
    Stage,
    StrategySpec,
    TrainResult,
    TrainsFromMaps,
)
from .core.errors import AutoTLError, BackboneError
from .core.files import file_sha256
from .data.preprocess import Preprocessing
from .plugins.hookspecs import PROJECT, AutoTLSpec, hookimpl, hookspec
from .plugins.weights import find_weights, hub_checkpoint, load_state_dict_file

__all__ = [
    "hookimpl",
    "hookspec",
    "PROJECT",
    "AutoTLSpec",
    "BackboneSpec",
    "BackboneNet",
    "TrainsFromMaps",
    "Stage",
    "Preprocessing",
    "StrategySpec",
    "STRATEGY_KINDS",
    "HeadTask",
    "ImageTask",
    "HeadConfig",
    "TrainResult",
    "ImageResult",
    "Console",
    "AutoTLError",
    "BackboneError",
    "load_state_dict_file",
    "find_weights",
    "hub_checkpoint",
    "file_sha256",
    "FeatureExtractor",  # noqa: F822 (module __getattr__)
    "check_backbone",  # noqa: F822 (module __getattr__)
]


def __getattr__(name: str):
    # torch-backed helpers, loaded on first use
    if name == "FeatureExtractor":
        from .features.extractor import FeatureExtractor

        return FeatureExtractor
    if name == "check_backbone":
        from .plugins.contract_check import check_backbone

        return check_backbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

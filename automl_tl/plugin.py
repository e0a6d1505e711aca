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

from .core.contract import (
    STRATEGY_KINDS,
    BackboneNet,
    BackboneSpec,
    Stage,
    StrategySpec,
    TrainsFromMaps,
)
from .core.errors import AutoTLError, BackboneError
from .plugins.hookspecs import PROJECT, AutoTLSpec, hookimpl, hookspec

# The rest loads on first use (module __getattr__ below): a plugin that imports only what
# its module level needs keeps `automl-tl --help` as fast as without it.
_LAZY = {
    "Console": "core.console",
    "file_sha256": "core.files",
    "HeadConfig": "core.tasks",
    "HeadTask": "core.tasks",
    "ImageResult": "core.tasks",
    "ImageTask": "core.tasks",
    "TrainResult": "core.tasks",
    "Preprocessing": "data.preprocess",
    "find_weights": "plugins.weights",
    "hub_checkpoint": "plugins.weights",
    "load_state_dict_file": "plugins.weights",
    "FeatureExtractor": "features.extractor",
    "check_backbone": "plugins.contract_check",
}

__all__ = [
    "hookimpl",
    "hookspec",
    "PROJECT",
    "AutoTLSpec",
    "BackboneSpec",
    "BackboneNet",
    "TrainsFromMaps",
    "Stage",
    "Preprocessing",  # noqa: F822 (module __getattr__)
    "StrategySpec",
    "STRATEGY_KINDS",
    "HeadTask",  # noqa: F822 (module __getattr__)
    "ImageTask",  # noqa: F822 (module __getattr__)
    "HeadConfig",  # noqa: F822 (module __getattr__)
    "TrainResult",  # noqa: F822 (module __getattr__)
    "ImageResult",  # noqa: F822 (module __getattr__)
    "Console",  # noqa: F822 (module __getattr__)
    "AutoTLError",
    "BackboneError",
    "load_state_dict_file",  # noqa: F822 (module __getattr__)
    "find_weights",  # noqa: F822 (module __getattr__)
    "hub_checkpoint",  # noqa: F822 (module __getattr__)
    "file_sha256",  # noqa: F822 (module __getattr__)
    "FeatureExtractor",  # noqa: F822 (module __getattr__)
    "check_backbone",  # noqa: F822 (module __getattr__)
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"automl_tl.{_LAZY[name]}"), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

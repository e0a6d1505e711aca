"""automl-tl: adapt a pretrained image network to your labelled images, export ONNX.

The package is laid out in rooms by role (docs/ARCHITECTURE.md): core, data, features,
train, decide, export, report, plugins, cli, with `pipeline` (the fit as steps),
`estimator` (AutoTransfer) and `plugin` (the plugin API) on top. Heavy modules (torch) load
lazily, so `automl_tl.inference` works where torch is absent.
"""

from __future__ import annotations

from . import _compat

__version__ = "0.1.0"

__all__ = ["AutoTransfer", "Predictor", "AutoTLError", "__version__"]

_LAZY = {
    "AutoTransfer": ("automl_tl.estimator", "AutoTransfer"),
    "Predictor": ("automl_tl.export.predictor", "Predictor"),
    "AutoTLError": ("automl_tl.core.errors", "AutoTLError"),
}

_compat.install()


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'automl_tl' has no attribute '{name}'")

"""automl-tl: adapt a pretrained image network to your labelled images, export ONNX.

Heavy modules (torch) load lazily, so `automl_tl.inference` works where torch is absent.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["AutoTransfer", "Predictor", "AutoTLError", "__version__"]

_LAZY = {
    "AutoTransfer": ("automl_tl.api", "AutoTransfer"),
    "Predictor": ("automl_tl.inference", "Predictor"),
    "AutoTLError": ("automl_tl.errors", "AutoTLError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'automl_tl' has no attribute '{name}'")

"""train: fitting models. Linear heads on cached features (logistic regression, AdamW), the
warm start and warm-started fine-tuning within a budget (tune: which candidate runs and
whether it is kept), the top stages on cached maps (top), the whole network on images
(full), their measured cost (estimates), checkpoints, and the image -> logits model.

May import: core, data, features. Never decide, export, report, plugins or above.
"""

from __future__ import annotations

__all__ = ["LinearHead", "HeadConfig", "TrainResult", "train_head", "head_batch_size"]


def __getattr__(name: str):
    # `from automl_tl.train import TrainResult` predates this package (it was one module);
    # those names resolve here without importing torch until they are used.
    if name in ("HeadConfig", "TrainResult"):
        from ..core import tasks

        return getattr(tasks, name)
    if name in ("LinearHead", "train_head", "head_batch_size"):
        from . import heads

        return getattr(heads, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The model a fit keeps: images (float32 NCHW RGB in [0, 1]) -> class logits, as the backbone
up to its cut (normalisation inside) followed by the head. Exported to ONNX as one graph."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data.batches import iter_batches
from ..data.preprocess import Preprocessing

__all__ = ["ExportModel", "predict_files"]


class ExportModel(nn.Module):
    """Float32 NCHW RGB in [0, 1] -> class logits."""

    def __init__(self, extractor: nn.Module, head: nn.Module):
        super().__init__()
        self.extractor, self.head = extractor, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(x))


def predict_files(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    prep: Preprocessing,
    n_classes: int,
    batch_size: int = 32,
) -> np.ndarray:
    """Class probabilities (len(paths), n_classes) of `model` for image files, in torch."""
    out = []
    with torch.inference_mode():
        for batch in iter_batches(list(paths), prep, batch_size):
            out.append(torch.softmax(model(torch.from_numpy(batch)), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, n_classes))

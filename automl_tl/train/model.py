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

__all__ = ["ExportModel", "Tail", "Everything", "predict_files"]


class ExportModel(nn.Module):
    """Float32 NCHW RGB in [0, 1] -> class logits (calibrated once `outputs` is set, a
    train.outputs.ModelOutputs that also gives probabilities and the OOD score and p-value)."""

    def __init__(self, extractor: nn.Module, head: nn.Module, outputs: nn.Module | None = None):
        super().__init__()
        self.extractor, self.head, self.outputs = extractor, head, outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_of(self.extractor(x))

    def logits_of(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits for head inputs, calibrated when the model has `outputs`."""
        z = self.head(features)
        return z if self.outputs is None else self.outputs.calibrate(z)


class Tail(nn.Module):
    """Head input -> every output of the exported model (logits only without `outputs`)."""

    def __init__(self, model: ExportModel):
        super().__init__()
        self.head, self.outputs = model.head, model.outputs

    def forward(self, features: torch.Tensor):
        z = self.head(features)
        return z if self.outputs is None else self.outputs(z, features)


class Everything(nn.Module):
    """Images -> every output of the exported model: what export traces."""

    def __init__(self, model: ExportModel):
        super().__init__()
        self.extractor, self.tail = model.extractor, Tail(model)

    def forward(self, x: torch.Tensor):
        return self.tail(self.extractor(x))


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

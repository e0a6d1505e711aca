"""What the exported model outputs beside its logits, as a torch module traced into the graph:
the logits divided by a temperature fitted on validation (calibrated), their softmax, and the
out-of-distribution score and conformal p-value of the features the head read.

The OOD score of an image is the mean cosine similarity of its L2-normalised head input to its
`k` nearest rows of `reference` (training images in the same space). Its p-value is the share
of held-out scores at most as high, counted conformally: (1 + #{held-out scores <= s}) / (n + 1).
The held-out scores are the validation images' and, when the features were not trained on the
training images (a frozen backbone), each reference image's score against the others. For an
image from the training distribution the p-value is (super-)uniform, so flagging p <= alpha
flags at most about alpha of such images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.stats import conformal_pvalue  # the graph's p-value in numpy

__all__ = [
    "ModelOutputs",
    "OUTPUT_NAMES",
    "knn_similarity",
    "loo_similarity",
    "conformal_pvalue",
]

OUTPUT_NAMES = ("logits", "probabilities", "ood_score", "ood_pvalue")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / torch.clamp(torch.linalg.vector_norm(x, dim=1, keepdim=True), min=1e-12)


class ModelOutputs(nn.Module):
    """(raw logits, head input) -> calibrated logits, probabilities, OOD score, OOD p-value."""

    def __init__(self, temperature: float, reference: np.ndarray, held_out: np.ndarray, k: int):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
        self.register_buffer("reference_t", _normalise(ref).t().contiguous())
        self.register_buffer("held_out", torch.from_numpy(np.sort(held_out).astype(np.float32)))
        self.k = int(min(k, len(reference)))

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity to the k nearest reference rows, (batch,)."""
        sims = _normalise(features.flatten(1)) @ self.reference_t
        return torch.topk(sims, self.k, dim=1).values.mean(dim=1)

    def forward(self, logits: torch.Tensor, features: torch.Tensor):
        z = self.calibrate(logits)
        s = self.score(features)
        below = (self.held_out.unsqueeze(0) <= s.unsqueeze(1)).to(torch.float32).sum(dim=1)
        p = (below + 1.0) / (self.held_out.numel() + 1.0)
        return z, torch.softmax(z, dim=1), s, p


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows flattened to float32 and scaled to unit L2 norm (as the graph's _normalise)."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_similarity(features: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """ModelOutputs.score in numpy (what the graph computes), in chunks."""
    ref = _unit_rows(reference).T
    k = min(k, ref.shape[1])
    out = []
    for start in range(0, len(features), 1024):
        sims = _unit_rows(features[start : start + 1024]) @ ref
        out.append(-np.sort(-sims, axis=1)[:, :k].mean(axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def loo_similarity(reference: np.ndarray, k: int) -> np.ndarray:
    """Each reference row's knn_similarity to the other rows (itself left out)."""
    x = _unit_rows(reference)
    k = min(k, len(x) - 1)
    if k < 1:
        return np.zeros(0, np.float32)
    out = []
    for start in range(0, len(x), 1024):
        sims = x[start : start + 1024] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        out.append(-np.sort(-sims, axis=1)[:, :k].mean(axis=1))
    return np.concatenate(out)

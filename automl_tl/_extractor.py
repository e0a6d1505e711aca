"""FeatureExtractor (re-exported by automl_tl.backbone, which does not import torch itself)."""

from __future__ import annotations

import torch
from torch import nn

from .preprocess import Preprocessing

__all__ = ["FeatureExtractor"]


class FeatureExtractor(nn.Module):
    """Normalisation + backbone up to a stage; returns global-average-pooled features.

    The input is float32 NCHW RGB in [0, 1]; mean/std live inside so the export carries them.
    """

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, cut: int):
        super().__init__()
        self.net = net
        self.cut = cut
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pooled features of every stage up to the cut, from one forward pass."""
        maps = self.net.forward_stages((x - self.mean) / self.std, self.cut)
        return [m.mean(dim=(2, 3)) for m in maps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_stages((x - self.mean) / self.std, self.cut)[-1].mean(dim=(2, 3))

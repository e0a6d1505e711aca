"""forward_stages wrapper of timm networks, imported only when a network is built."""

from __future__ import annotations

import torch
from torch import nn


class TimmStages(nn.Module):
    """forward_stages over timm's forward_intermediates; the last stage is the final
    feature map (CNNs) or the pre-logits token as a 1x1 map (ViT)."""

    def __init__(self, model: nn.Module, indices: list[int], is_vit: bool):
        super().__init__()
        self.model, self.indices, self.is_vit = model, indices, is_vit
        self.classifier = model.get_classifier() if is_vit else _PooledHead(model)

    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        if upto < len(self.indices):
            wanted = self.indices[: upto + 1]
            return list(
                self.model.forward_intermediates(
                    x, indices=wanted, intermediates_only=True, stop_early=True
                )
            )
        final, maps = self.model.forward_intermediates(x, indices=self.indices)
        if self.is_vit:
            final = self.model.forward_head(final, pre_logits=True)[:, :, None, None]
        return list(maps) + [final]


class _PooledHead(nn.Module):
    """The source classifier over pooled features: timm's head applied to a 1x1 map
    (its global pooling is then the identity)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(pooled[:, :, None, None])

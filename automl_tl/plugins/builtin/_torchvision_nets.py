"""forward_stages wrappers of the torchvision networks, imported only when a network is
built (they need torch; registering the backbones does not)."""

from __future__ import annotations

import torch
from torch import nn


class _Wrapper(nn.Module):
    """Holds the torchvision model (`model`) and its source classifier (`classifier`)."""

    def __init__(self, model: nn.Module, ends: tuple[int, ...], classifier: nn.Module):
        super().__init__()
        self.model = model
        self.ends = ends
        self.classifier = classifier


class _ResNetStages(_Wrapper):
    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        maps = [x]
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4)[:upto]:
            x = layer(x)
            maps.append(x)
        return maps

    def forward_from(self, x: torch.Tensor, after: int, upto: int) -> list[torch.Tensor]:
        """The maps of stages after+1..upto, given `x`, the map of stage `after`."""
        m, maps = self.model, []
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4)[after:upto]:
            x = layer(x)
            maps.append(x)
        return maps


class _FeatureStages(_Wrapper):
    """`model.features` children run in groups; each group's output is a stage."""

    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        maps, start = [], 0
        for end in self.ends[: upto + 1]:
            for i in range(start, end):
                x = self.model.features[i](x)
            maps.append(x)
            start = end
        return maps

    def forward_from(self, x: torch.Tensor, after: int, upto: int) -> list[torch.Tensor]:
        """The maps of stages after+1..upto, given `x`, the map of stage `after`."""
        maps = []
        for k in range(after + 1, upto + 1):
            for i in range(self.ends[k - 1], self.ends[k]):
                x = self.model.features[i](x)
            maps.append(x)
        return maps


class _ViTStages(_Wrapper):
    """Encoder depths as stages: patch tokens as (N, C, H, W); the last is the class token
    after the final LayerNorm as (N, C, 1, 1), the torchvision head's input."""

    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        m = self.model
        x = m._process_input(x)
        n = x.shape[0]
        x = torch.cat([m.class_token.expand(n, -1, -1), x], dim=1)
        x = m.encoder.dropout(x + m.encoder.pos_embedding)
        grid = m.image_size // m.patch_size
        maps, start = [], 0
        for k, end in enumerate(self.ends[: upto + 1]):
            for i in range(start, end):
                x = m.encoder.layers[i](x)
            start = end
            if k == len(self.ends) - 1:
                maps.append(m.encoder.ln(x)[:, 0, :, None, None])
            else:
                maps.append(x[:, 1:].transpose(1, 2).reshape(n, x.shape[-1], grid, grid))
        return maps


class _PooledHead(nn.Module):
    """Runs a head written for (N, C, 1, 1) maps (ConvNeXt: LayerNorm2d, Flatten, Linear)
    on pooled (N, C) features."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, :, None, None])


def wrap(family: str, model: nn.Module, ends: tuple[int, ...]) -> nn.Module:
    if family == "resnet":
        return _ResNetStages(model, ends, model.fc)
    if family == "features":
        return _FeatureStages(model, ends, model.classifier)
    if family == "convnext":
        return _FeatureStages(model, ends, _PooledHead(model.classifier))
    return _ViTStages(model, ends, model.heads)

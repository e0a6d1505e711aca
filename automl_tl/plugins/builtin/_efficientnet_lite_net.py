"""The EfficientNet-Lite network wrapper, imported only when a network is built (it needs
torch; the plugin module that registers the backbones does not)."""

from __future__ import annotations

import torch
from torch import nn

from ...core.contract import Stage


class LiteStages(nn.Module):
    """Wraps the upstream EfficientNet so stages can be cut: stem, block groups, head conv."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # Group consecutive blocks with the same output width into one stage.
        groups, widths = [], []
        for i, block in enumerate(model._blocks):
            width = block._block_args.output_filters
            if widths and widths[-1] == width:
                groups[-1].append(i)
            else:
                groups.append([i])
                widths.append(width)
        self.block_groups = groups
        self.classifier = model._fc

    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(x)))
        maps = [x]
        for group in self.block_groups:
            if len(maps) > upto:
                return maps
            for i in group:
                x = m._blocks[i](x)
            maps.append(x)
        if len(maps) <= upto:
            maps.append(m._swish(m._bn1(m._conv_head(x))))
        return maps

    def forward_from(self, x: torch.Tensor, after: int, upto: int) -> list[torch.Tensor]:
        """The maps of stages after+1..upto, given `x`, the map of stage `after`."""
        m, maps = self.model, []
        for n, group in enumerate(self.block_groups, start=1):
            if after < n <= upto:
                for i in group:
                    x = m._blocks[i](x)
                maps.append(x)
        if after < len(self.block_groups) + 1 <= upto:
            maps.append(m._swish(m._bn1(m._conv_head(x))))
        return maps


def derive_stages(model: LiteStages) -> tuple[Stage, ...]:
    m = model.model
    stages = [Stage("stem", m._bn0.num_features, 2)]
    stride = 2
    for n, group in enumerate(model.block_groups):
        first = m._blocks[group[0]]._block_args
        s = first.stride[0] if isinstance(first.stride, list) else first.stride
        stride *= s
        stages.append(Stage(f"block{n}", first.output_filters, stride))
    stages.append(Stage("head", m._bn1.num_features, stride))
    return tuple(stages)

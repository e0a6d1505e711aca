"""FeatureExtractor (re-exported by automl_tl.core.contract, which does not import torch itself)."""

from __future__ import annotations

import torch
from torch import nn

from ..data.preprocess import Preprocessing

__all__ = ["FeatureExtractor", "grid_pool"]


def grid_pool(m: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool an NCHW map to a grid x grid map, flattened channel-major to
    (N, C * grid * grid): the values of `adaptive_avg_pool2d(m, grid).flatten(1)`. Grid 0
    keeps the whole map (N, C * H * W), what fine-tuning on cached maps reads back.

    Written with static slices because the ONNX exporter refuses adaptive pooling whose
    output size does not divide the input (7 -> 2, 14 -> 4 on a 224 px input)."""
    if grid == 0:
        return m.flatten(1)
    if grid == 1:
        return m.mean(dim=(2, 3))
    h, w = int(m.shape[-2]), int(m.shape[-1])
    if h % grid == 0 and w % grid == 0:  # equal cells: one pooling op (ONNX AveragePool)
        return nn.functional.avg_pool2d(m, (h // grid, w // grid)).flatten(1)
    cells = []
    for i in range(grid):
        band = m[:, :, (i * h) // grid : -((-(i + 1) * h) // grid), :]
        for j in range(grid):
            cells.append(
                band[:, :, :, (j * w) // grid : -((-(j + 1) * w) // grid)].mean(dim=(2, 3))
            )
    return torch.stack(cells, dim=2).flatten(1)


class FeatureExtractor(nn.Module):
    """Normalisation + backbone up to a stage; returns that stage's map average-pooled to a
    `grid` x `grid` map (global pooling by default), flattened.

    The input is float32 NCHW RGB in [0, 1]; mean/std live inside so the export carries them.
    `views` lists the (stage index, grid) pairs `stage_features` returns from one forward pass
    (default: every stage up to the cut, globally pooled). `parts`, when given, makes the
    output several stages' pooled maps side by side (a joined view; `cut` is the deepest).
    """

    def __init__(
        self,
        net: nn.Module,
        preprocessing: Preprocessing,
        cut: int,
        grid: int = 1,
        views: tuple[tuple[int, int], ...] | None = None,
        parts: tuple[tuple[int, int], ...] = (),
    ):
        super().__init__()
        self.net = net
        self.cut = cut
        self.grid = grid
        self.views = tuple(views) if views is not None else tuple((i, 1) for i in range(cut + 1))
        self.parts = tuple(tuple(p) for p in parts)
        if any(i > cut for i, _ in self.views + self.parts):
            raise ValueError(f"views {self.views + self.parts} reach past the cut at stage {cut}")
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pooled features of every view, from one forward pass."""
        maps = self.net.forward_stages((x - self.mean) / self.std, self.cut)
        return [grid_pool(maps[i], g) for i, g in self.views]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.net.forward_stages((x - self.mean) / self.std, self.cut)
        if self.parts:
            return torch.cat([grid_pool(maps[i], g) for i, g in self.parts], dim=1)
        return grid_pool(maps[-1], self.grid)

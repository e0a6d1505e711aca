"""TODO."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import AutoTLError
from ..features import ops
from ..features.extractor import grid_pool
from ..features.views import View


def trains_from_maps(net: nn.Module) -> bool:
    """Whether the backbone can run its top stages from a cached map (`forward_from`)."""
    return callable(getattr(net, "forward_from", None))


def map_shape(spec, after: int) -> tuple[int, int, int]:
    """(channels, height, width) of stage `after`'s map at the backbone's input size."""
    stage = spec.stages[after]
    side = math.ceil(spec.preprocessing.crop_size / max(stage.stride, 1))
    return stage.width, side, side


def map_view(spec, after: int) -> View:
    """The feature-cache view that stores stage `after`'s whole map (grid 0)."""
    c, h, w = map_shape(spec, after)
    name = spec.stages[after].name
    return View(f"{name}:map", name, after, 0, c * h * w)


class TopModel(nn.Module):
    """Stages after+1..cut of `net` from stage `after`'s map, pooled to grid, then the head."""

    def __init__(
        self,
        net: nn.Module,
        after: int,
        cut: int,
        grid: int,
        head: nn.Module,
        shape: tuple[int, int, int],
        parts: tuple[tuple[int, int], ...] = (),
    ):
        super().__init__()
        if not trains_from_maps(net):
            raise AutoTLError(
                f"backbone network {type(net).__name__} has no forward_from; it cannot be "
                "fine-tuned from cached maps (full fine-tuning still works)"
            )
        if not 0 <= after < cut:
            raise AutoTLError(f"top stages {after + 1}..{cut} are empty; pick after < cut")
        self.net, self.after, self.cut, self.grid, self.head = net, after, cut, grid, head
        self.shape = tuple(shape)  # (C, H, W) of stage `after`'s map
        # a joined view's (stage index, grid) members: each must be a stage trained here
        self.parts = tuple(tuple(p) for p in parts)
        if any(not after < i <= cut for i, _ in self.parts):
            raise AutoTLError(
                f"joined view {self.parts} reads a stage at or below the cached map "
                f"(stage {after}); pick after below its lowest member"
            )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        # channels_last: 2.9x the training speed of NCHW-contiguous on this CPU (block4 of
        # EfficientNet-Lite0 from 14x14 maps, batch 64: 27 vs 9.5 img/s)
        maps = maps.contiguous(memory_format=torch.channels_last)
        out = self.net.forward_from(maps, self.after, self.cut)
        if self.parts:
            pooled = [grid_pool(out[i - self.after - 1], g) for i, g in self.parts]
            return self.head(torch.cat(pooled, dim=1))
        return self.head(grid_pool(out[-1], self.grid))

    def trained_parameters(self, shape: tuple[int, int, int]) -> list[nn.Parameter]:
        """The parameters a forward pass from the map reaches (the top stages and the head);
        the rest of the network is frozen (requires_grad False)."""
        self.eval()
        for p in self.parameters():
            p.grad = None
        self(torch.rand(1, *shape)).sum().backward()
        trained = []
        for p in self.parameters():
            if p.grad is not None:
                trained.append(p)
            else:
                p.requires_grad_(False)
            p.grad = None
        return trained

    def channels_last(self, on: bool = True) -> TopModel:
        fmt = torch.channels_last if on else torch.contiguous_format
        return self.to(memory_format=fmt)

    def train_mode(self) -> None:
        """Train mode with every BatchNorm in eval mode (statistics frozen)."""
        self.train()
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _batches(n: int, size: int, seed: int | None):
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    for i in range(0, n, size):
        yield torch.from_numpy(order[i : i + size].copy())


@torch.no_grad()
def _evaluate(
    model: TopModel, rows, y: torch.Tensor, shape, batch: int
) -> tuple[float, float, np.ndarray]:
    """(loss, accuracy, predictions) of `model` on stored map rows."""
    model.eval()
    logits = torch.cat(
        [
            model(ops.gather_dequantize(rows.values, rows.scales, idx).view(-1, *shape))
            for idx in _batches(len(rows), batch, None)
        ]
    )
    pred = logits.argmax(1)
    return float(F.cross_entropy(logits, y)), float((pred == y).float().mean()), pred.numpy()


@torch.no_grad()
def predict_maps(model: TopModel, rows, batch: int = 256) -> np.ndarray:
    """Predicted classes of `model` for stored map rows (no labels needed)."""
    model.eval()
    if not len(rows):
        return np.zeros(0, dtype=np.int64)
    return torch.cat(
        [
            model(
                ops.gather_dequantize(rows.values, rows.scales, idx).view(-1, *model.shape)
            ).argmax(1)
            for idx in _batches(len(rows), batch, None)
        ]
    ).numpy()


def top_model(
    spec,
    net: nn.Module,
    after: int,
    cut: int,
    grid: int,
    head: nn.Module,
    parts: tuple[tuple[int, int], ...] = (),
) -> TopModel:
    """A TopModel on copies of `net` and `head` (the caller's stay as they were)."""
    shape = map_shape(spec, after)
    return TopModel(copy.deepcopy(net), after, cut, grid, copy.deepcopy(head), shape, parts)

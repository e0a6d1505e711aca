"""The backbone contract: config, ordered stages (cut points), weights, feature extraction."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import BackboneError
from .preprocess import Preprocessing

__all__ = [
    "Stage",
    "BackboneSpec",
    "FeatureExtractor",
    "load_state_dict_file",
    "file_sha256",
]


@dataclass(frozen=True)
class Stage:
    """A cut point: its name, feature width (channels) and stride relative to the input."""

    name: str
    width: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone plugin registers.

    `build(weights)` returns an nn.Module whose `forward_stages(x, upto)` returns the
    feature maps of stages 0..upto (in order) and whose `classifier` attribute is the
    source classifier (an nn.Linear over the last stage's pooled features) or None.
    `weights` is None for the default weights or a path to a local weight file.
    """

    name: str
    build: Callable[[str | None], nn.Module]
    stages: tuple[Stage, ...]
    preprocessing: Preprocessing
    source_domain: str
    weights_path: Callable[[], Path | None] = field(default=lambda: None)
    description: str = ""

    def stage_index(self, name: str) -> int:
        for i, st in enumerate(self.stages):
            if st.name == name:
                return i
        known = ", ".join(s.name for s in self.stages)
        raise BackboneError(f"backbone '{self.name}' has no stage '{name}'; stages: {known}")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: str | Path) -> dict:
    """Load a state dict safely (`weights_only=True`; never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file '{path}' not found; pass an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(
            f"weights file '{path}' cannot be loaded safely ({type(e).__name__}); "
            "provide a plain state dict saved with torch.save(model.state_dict(), ...)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"weights file '{path}' holds {type(state).__name__}, not a state dict")
    return state


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

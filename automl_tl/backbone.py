"""The backbone contract: config, ordered stages (cut points), weights, feature extraction.

Importing this module does not import torch (plugins import it to register backbones, and
`automl-tl --help` loads the plugins): `FeatureExtractor` and `load_state_dict_file` load
it when used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BackboneError

if TYPE_CHECKING:
    from torch import nn

    from ._extractor import FeatureExtractor
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

    `build(weights=None, pretrained=True, allow_download=False)` returns an nn.Module in
    eval mode whose `forward_stages(x, upto)` returns the NCHW feature maps of stages
    0..upto (in order) and whose `classifier` attribute is the source classifier (a module
    mapping the last stage's pooled features to source-class logits) or None.
    Optionally, `forward_from(x, after, upto)` returns the maps of stages after+1..upto from
    `x`, the map of stage `after`: with it the top stages can be fine-tuned on cached maps
    (automl_tl.partial); without it a backbone is fine-tuned whole.
    `weights` is a local weight file (state dict or safetensors) overriding the default
    ones; `pretrained=False` gives random initialisation (tests, training from scratch);
    `allow_download` lets the plugin fetch default weights that are not on disk.
    `weights_path()` is the default weight file when it is on disk, else None.
    """

    name: str
    build: Callable[..., nn.Module]
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
    """Load a state dict safely: safetensors, or torch.load with `weights_only=True`
    (never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file '{path}' not found; pass an existing file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        import torch

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


def __getattr__(name: str):
    if name == "FeatureExtractor":  # defined with torch, so loaded on first use
        from ._extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""torchvision ImageNet-1k backbones: ResNet-18/50, MobileNetV3-Large, EfficientNet-B0,
ConvNeXt-Tiny and ViT-B/16.

Preprocessing and the weight file name come from torchvision's weights API; the weights
themselves are found by `automl_tl.weights.find_weights` (a user's file, the torch hub cache,
or a download only when allowed). Importing this module is cheap: torchvision is imported
when the plugin registers, and a network is built only by `build()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..backbone import BackboneSpec, Stage, load_state_dict_file
from ..errors import BackboneError
from ..hookspecs import hookimpl
from ..preprocess import Preprocessing
from ..weights import find_weights, hub_checkpoint

__all__ = ["TORCHVISION_BACKBONES", "register_backbones"]

# Stages (cut points): (name, end, width, stride). `end` is, for ResNets, the residual layer
# the stage ends with (0 = stem: conv1..maxpool); for the `features` networks, the index
# one past the last `features` child in the stage; for ViT, the encoder depth (number of
# blocks). The contract test checks every width and stride against real feature maps.
_RESNET18 = (
    ("stem", 0, 64, 4),
    ("layer1", 1, 64, 4),
    ("layer2", 2, 128, 8),
    ("layer3", 3, 256, 16),
    ("layer4", 4, 512, 32),
)
_RESNET50 = (
    ("stem", 0, 64, 4),
    ("layer1", 1, 256, 4),
    ("layer2", 2, 512, 8),
    ("layer3", 3, 1024, 16),
    ("layer4", 4, 2048, 32),
)
_MOBILENET_V3_LARGE = (  # features 0 (conv) and 1 (16->16 block) share width and stride
    ("stem", 2, 16, 2),
    ("stage1", 4, 24, 4),
    ("stage2", 7, 40, 8),
    ("stage3", 11, 80, 16),
    ("stage4", 13, 112, 16),
    ("stage5", 16, 160, 32),
    ("head", 17, 960, 32),
)
_EFFICIENTNET_B0 = (  # one stage per `features` child, as torchvision groups the blocks
    ("stem", 1, 32, 2),
    ("stage1", 2, 16, 2),
    ("stage2", 3, 24, 4),
    ("stage3", 4, 40, 8),
    ("stage4", 5, 80, 16),
    ("stage5", 6, 112, 16),
    ("stage6", 7, 192, 32),
    ("stage7", 8, 320, 32),
    ("head", 9, 1280, 32),
)
_CONVNEXT_TINY = (  # each stage: downsampling layer (stem for stage1) + its blocks
    ("stage1", 2, 96, 4),
    ("stage2", 4, 192, 8),
    ("stage3", 6, 384, 16),
    ("stage4", 8, 768, 32),
)
_VIT_B_16 = (  # intermediate: patch tokens as NCHW; last: final-LayerNorm class token, 1x1
    ("block3", 3, 768, 16),
    ("block6", 6, 768, 16),
    ("block9", 9, 768, 16),
    ("class_token", 12, 768, 16),
)

# name -> (wrapper family, stage table)
_TABLE = {
    "resnet18": ("resnet", _RESNET18),
    "resnet50": ("resnet", _RESNET50),
    "mobilenet_v3_large": ("features", _MOBILENET_V3_LARGE),
    "efficientnet_b0": ("features", _EFFICIENTNET_B0),
    "convnext_tiny": ("convnext", _CONVNEXT_TINY),
    "vit_b_16": ("vit", _VIT_B_16),
}
TORCHVISION_BACKBONES = tuple(_TABLE)


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


def _wrap(family: str, model: nn.Module, ends: tuple[int, ...]) -> nn.Module:
    if family == "resnet":
        return _ResNetStages(model, ends, model.fc)
    if family == "features":
        return _FeatureStages(model, ends, model.classifier)
    if family == "convnext":
        return _FeatureStages(model, ends, _PooledHead(model.classifier))
    return _ViTStages(model, ends, model.heads)


def _load_strict(model: nn.Module, path: Path, name: str) -> None:
    """Load a state dict file into `model`; any key or shape mismatch is one error line."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != own[k].shape]
    if missing or unexpected or wrong:
        example = (wrong or missing or unexpected)[0]
        raise BackboneError(
            f"weights file '{path}' does not match {name} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys, {len(wrong)} of the wrong shape, "
            f"e.g. '{example}'); pass a state dict of torchvision's {name}"
        )
    model.load_state_dict(state, strict=True)


def _preprocessing(weights) -> Preprocessing:
    t = weights.transforms()
    interpolation = t.interpolation.value
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"{weights}: unsupported interpolation '{interpolation}'")
    return Preprocessing(
        crop_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        interpolation=interpolation,
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
    )


def _make_spec(name: str) -> BackboneSpec:
    from torchvision.models import get_model_weights

    family, table = _TABLE[name]
    default = get_model_weights(name).DEFAULT
    url = default.url
    filename = os.path.basename(urlparse(url).path)  # what torch.hub caches it as
    ends = tuple(end for _, end, _, _ in table)

    def cached() -> Path | None:
        path = hub_checkpoint(filename)
        return path if path.is_file() else None

    def build(
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        allow_download: bool = False,
    ) -> nn.Module:
        path = None
        if weights or pretrained:  # find the file before paying for the network
            path = find_weights(name, filename, url, weights, allow_download)
        from torchvision.models import get_model

        model = get_model(name, weights=None)
        if path is not None:
            _load_strict(model, path, name)
        return _wrap(family, model, ends).eval()

    acc = default.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    score = f", {acc:.1f}% top-1" if acc is not None else ""
    return BackboneSpec(
        name=name,
        build=build,
        stages=tuple(Stage(n, width, stride) for n, _, width, stride in table),
        preprocessing=_preprocessing(default),
        source_domain="imagenet-1k",
        weights_path=cached,
        description=f"torchvision {name} ({default}, ImageNet-1k{score})",
    )


@hookimpl
def register_backbones(register):
    """Register the torchvision ImageNet-1k backbones (no network is built here)."""
    for name in _TABLE:
        register(_make_spec(name))

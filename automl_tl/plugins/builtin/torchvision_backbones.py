"""torchvision ImageNet-1k backbones: ResNet-18/50, MobileNetV3-Large, EfficientNet-B0,
ConvNeXt-Tiny and ViT-B/16.

Preprocessing and the weight file name are those of torchvision's weights API (DEFAULT
weights), declared below because importing torchvision.models costs seconds (it imports
torch._dynamo); tests/test_cli_speed.py checks the declaration against the installed
torchvision. The weights themselves are found by `automl_tl.plugins.weights.find_weights` (a user's
file, the torch hub cache, or a download only when allowed). Neither importing this module
nor registering imports torch or torchvision; a network is built only by `build()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ...core.contract import BackboneSpec, Stage
from ...core.errors import BackboneError
from ..hookspecs import hookimpl
from ..weights import find_weights, hub_checkpoint, load_state_dict_file

if TYPE_CHECKING:  # numpy and PIL come with it: imported when a spec is made
    from ...data.preprocess import Preprocessing

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
# Parameter counts (what `automl-tl backbones` shows without building a network; the
# backbone contract test counts them on the built network).
_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "convnext_tiny": 28_589_128,
    "vit_b_16": 86_567_656,
}

# name -> what torchvision's DEFAULT weights say: (str(weights), url, crop, resize,
# interpolation, ImageNet-1k acc@1); mean and std are ImageNet's for all of them.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_HUB = "https://download.pytorch.org/models/"
_DEFAULTS = {
    "resnet18": (
        "ResNet18_Weights.IMAGENET1K_V1",
        _HUB + "resnet18-f37072fd.pth",
        224,
        256,
        "bilinear",
        69.758,
    ),
    "resnet50": (
        "ResNet50_Weights.IMAGENET1K_V2",
        _HUB + "resnet50-11ad3fa6.pth",
        224,
        232,
        "bilinear",
        80.858,
    ),
    "mobilenet_v3_large": (
        "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        _HUB + "mobilenet_v3_large-5c1a4163.pth",
        224,
        232,
        "bilinear",
        75.274,
    ),
    "efficientnet_b0": (
        "EfficientNet_B0_Weights.IMAGENET1K_V1",
        _HUB + "efficientnet_b0_rwightman-7f5810bc.pth",
        224,
        256,
        "bicubic",
        77.692,
    ),
    "convnext_tiny": (
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        _HUB + "convnext_tiny-983f1562.pth",
        224,
        236,
        "bilinear",
        82.52,
    ),
    "vit_b_16": (
        "ViT_B_16_Weights.IMAGENET1K_V1",
        _HUB + "vit_b_16-c867db91.pth",
        224,
        256,
        "bilinear",
        81.072,
    ),
}


def _load_strict(model, path: Path, name: str) -> None:
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
    """Preprocessing from a torchvision weights enum (what `_DEFAULTS` must agree with)."""
    from ...data.preprocess import Preprocessing

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
    family, table = _TABLE[name]
    label, url, crop, resize, interpolation, acc = _DEFAULTS[name]
    filename = os.path.basename(urlparse(url).path)  # what torch.hub caches it as
    ends = tuple(end for _, end, _, _ in table)

    def cached() -> Path | None:
        path = hub_checkpoint(filename)
        return path if path.is_file() else None

    def build(
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        allow_download: bool = False,
    ):
        path = None
        if weights or pretrained:  # find the file before paying for the network
            path = find_weights(name, filename, url, weights, allow_download)
        from torchvision.models import get_model

        from ._torchvision_nets import wrap

        model = get_model(name, weights=None)
        if path is not None:
            _load_strict(model, path, name)
        return wrap(family, model, ends).eval()

    from ...data.preprocess import Preprocessing

    prep = Preprocessing(
        crop_size=crop,
        resize_size=resize,
        interpolation=interpolation,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
    )
    return BackboneSpec(
        name=name,
        build=build,
        stages=tuple(Stage(n, width, stride) for n, _, width, stride in table),
        preprocessing=prep,
        source_domain="imagenet-1k",
        weights_path=cached,
        description=f"torchvision {name} ({label}, ImageNet-1k, {acc:.1f}% top-1)",
        parameters=_PARAMETERS[name],
    )


@hookimpl
def register_backbones(register):
    """Register the torchvision ImageNet-1k backbones (no network is built here)."""
    for name in _TABLE:
        register(_make_spec(name))

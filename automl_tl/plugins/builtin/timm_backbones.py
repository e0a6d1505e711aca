"""timm backbones (optional: `pip install automl-tl[timm]`), offline unless allowed.

Preprocessing is timm's `pretrained_cfg`, declared in `_CFG` because importing timm costs
seconds at every start (tests/test_cli_speed.py checks it against the installed timm);
weights come from `--weights PATH`, the Hugging Face hub cache, or a download through timm
when the user allows it. Stage tables are declared here (building every model at start-up
would be slow) and verified against real shapes by the backbone contract test. timm itself
is imported only by `build()`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.contract import BackboneSpec, Stage
from ...core.errors import BackboneError
from ..hookspecs import hookimpl
from ..weights import download_allowed, load_state_dict_file

if TYPE_CHECKING:  # numpy and PIL come with it: imported when a spec is made
    from ...data.preprocess import Preprocessing

# timm model name -> stages (feature_info entries, then the final features).
# fmt: off
_MODELS = {
    "resnet18.a1_in1k": (("act1", 64, 2), ("layer1", 64, 4), ("layer2", 128, 8),
                         ("layer3", 256, 16), ("layer4", 512, 32), ("head", 512, 32)),
    "efficientnet_b0.ra_in1k": (("blocks0", 16, 2), ("blocks1", 24, 4), ("blocks2", 40, 8),
                                ("blocks4", 112, 16), ("blocks6", 320, 32), ("head", 1280, 32)),
    "convnext_nano.in12k_ft_in1k": (("stage0", 80, 4), ("stage1", 160, 8), ("stage2", 320, 16),
                                    ("stage3", 640, 32), ("head", 640, 32)),
    "vit_small_patch16_224.augreg_in21k_ft_in1k": (
        ("block3", 384, 16), ("block6", 384, 16), ("block9", 384, 16), ("head", 384, 16)),
}
# fmt: on
# Parameter counts (what `automl-tl backbones` shows without building a network; the
# backbone contract test counts them on the built network).
_PARAMETERS = {
    "resnet18.a1_in1k": 11_689_512,
    "efficientnet_b0.ra_in1k": 5_288_548,
    "convnext_nano.in12k_ft_in1k": 15_593_560,
    "vit_small_patch16_224.augreg_in21k_ft_in1k": 22_050_664,
}
# timm model name -> its pretrained_cfg: (crop, crop_pct, interpolation, mean, std, hf_hub_id).
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CFG = {
    "resnet18.a1_in1k": (224, 0.95, "bicubic", *_IMAGENET, "timm/resnet18.a1_in1k"),
    "efficientnet_b0.ra_in1k": (224, 0.875, "bicubic", *_IMAGENET, "timm/efficientnet_b0.ra_in1k"),
    "convnext_nano.in12k_ft_in1k": (
        224,
        0.95,
        "bicubic",
        *_IMAGENET,
        "timm/convnext_nano.in12k_ft_in1k",
    ),
    "vit_small_patch16_224.augreg_in21k_ft_in1k": (
        224,
        0.9,
        "bicubic",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    ),
}
# ViT: intermediate stages are taken after these blocks (timm feature_info indices).
_VIT_BLOCKS = {"vit_small_patch16_224.augreg_in21k_ft_in1k": (2, 5, 8)}


def _hub_cached(hf_hub_id: str | None) -> Path | None:
    """model.safetensors of this model in the Hugging Face cache, if present."""
    if not hf_hub_id:
        return None
    home = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    folder = home / ("models--" + hf_hub_id.replace("/", "--")) / "snapshots"
    found = sorted(folder.glob("*/model.safetensors")) if folder.is_dir() else []
    return found[-1] if found else None


def _preprocessing(crop, crop_pct, interpolation, mean, std) -> Preprocessing:
    from ...data.preprocess import Preprocessing

    return Preprocessing(
        crop_size=crop,
        resize_size=round(crop / crop_pct),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
        mean=tuple(mean),
        std=tuple(std),
    )


def cfg_preprocessing(cfg) -> Preprocessing:
    """Preprocessing from a timm pretrained_cfg (what `_CFG` must agree with)."""
    return _preprocessing(cfg.input_size[-1], cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std)


def _make_spec(timm_name: str, stages: tuple) -> BackboneSpec:
    *geometry, hf_hub_id = _CFG[timm_name]
    name = "timm/" + timm_name
    is_vit = timm_name.startswith("vit_")
    indices = list(_VIT_BLOCKS.get(timm_name, range(len(stages) - 1)))

    def build(weights=None, pretrained=True, allow_download=False):
        import timm

        from ._timm_nets import TimmStages

        path = Path(weights) if weights else (_hub_cached(hf_hub_id) if pretrained else None)
        if pretrained and path is None:
            if not download_allowed(allow_download):
                raise BackboneError(
                    f"no weights for {name}: expected model.safetensors of {hf_hub_id} in "
                    "the Hugging Face cache; pass --weights PATH or --allow-download when online"
                )
            model = timm.create_model(timm_name, pretrained=True)
        else:
            model = timm.create_model(timm_name, pretrained=False)
            if path is not None:
                try:
                    model.load_state_dict(load_state_dict_file(path))
                except RuntimeError as e:
                    raise BackboneError(
                        f"weights file '{path}' does not match {name}: {str(e).splitlines()[0]}"
                    ) from None
        return TimmStages(model.eval(), indices, is_vit).eval()

    return BackboneSpec(
        name=name,
        build=build,
        stages=tuple(Stage(*s) for s in stages),
        preprocessing=_preprocessing(*geometry),
        source_domain="imagenet-1k",
        weights_path=lambda: _hub_cached(hf_hub_id),
        description=f"timm {timm_name}",
        parameters=_PARAMETERS[timm_name],
    )


@hookimpl
def register_backbones(register):
    """Register the curated timm backbones when timm is installed (without importing it)."""
    if importlib.util.find_spec("timm") is None:
        return
    for timm_name, stages in _MODELS.items():
        register(_make_spec(timm_name, stages))

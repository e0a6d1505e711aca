"""timm backbones (optional: `pip install automl-tl[timm]`), offline unless allowed.

Preprocessing comes from timm's `pretrained_cfg`; weights from `--weights PATH`, the
Hugging Face hub cache, or a download through timm when the user allows it. Stage tables
are declared here (building every model at start-up would be slow) and verified against
real shapes by the backbone contract test.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..backbone import BackboneSpec, Stage, load_state_dict_file
from ..errors import BackboneError
from ..hookspecs import hookimpl
from ..preprocess import Preprocessing
from ..weights import download_allowed

# timm model name -> stages (feature_info entries, then the final features).
_MODELS = {
    "resnet18.a1_in1k": (
        ("act1", 64, 2),
        ("layer1", 64, 4),
        ("layer2", 128, 8),
        ("layer3", 256, 16),
        ("layer4", 512, 32),
        ("head", 512, 32),
    ),
    "efficientnet_b0.ra_in1k": (
        ("blocks0", 16, 2),
        ("blocks1", 24, 4),
        ("blocks2", 40, 8),
        ("blocks4", 112, 16),
        ("blocks6", 320, 32),
        ("head", 1280, 32),
    ),
    "convnext_nano.in12k_ft_in1k": (
        ("stage0", 80, 4),
        ("stage1", 160, 8),
        ("stage2", 320, 16),
        ("stage3", 640, 32),
        ("head", 640, 32),
    ),
    "vit_small_patch16_224.augreg_in21k_ft_in1k": (
        ("block3", 384, 16),
        ("block6", 384, 16),
        ("block9", 384, 16),
        ("head", 384, 16),
    ),
}
# ViT: intermediate stages are taken after these blocks (timm feature_info indices).
_VIT_BLOCKS = {"vit_small_patch16_224.augreg_in21k_ft_in1k": (2, 5, 8)}


class _TimmStages(nn.Module):
    """forward_stages over timm's forward_intermediates; the last stage is the final
    feature map (CNNs) or the pre-logits token as a 1x1 map (ViT)."""

    def __init__(self, model: nn.Module, indices: list[int], is_vit: bool):
        super().__init__()
        self.model, self.indices, self.is_vit = model, indices, is_vit
        self.classifier = model.get_classifier() if is_vit else _PooledHead(model)

    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        if upto < len(self.indices):
            wanted = self.indices[: upto + 1]
            return list(
                self.model.forward_intermediates(
                    x, indices=wanted, intermediates_only=True, stop_early=True
                )
            )
        final, maps = self.model.forward_intermediates(x, indices=self.indices)
        if self.is_vit:
            final = self.model.forward_head(final, pre_logits=True)[:, :, None, None]
        return list(maps) + [final]


class _PooledHead(nn.Module):
    """The source classifier over pooled features: timm's head applied to a 1x1 map
    (its global pooling is then the identity)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(pooled[:, :, None, None])


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


def _make_spec(timm_name: str, stages: tuple) -> BackboneSpec:
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    name = "timm/" + timm_name
    crop = cfg.input_size[-1]
    interpolation = (
        cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") else ("bilinear")
    )
    prep = Preprocessing(
        crop_size=crop,
        resize_size=round(crop / cfg.crop_pct),
        interpolation=interpolation,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )
    is_vit = timm_name.startswith("vit_")
    indices = list(_VIT_BLOCKS.get(timm_name, range(len(stages) - 1)))

    def build(weights=None, pretrained=True, allow_download=False) -> nn.Module:
        path = Path(weights) if weights else (_hub_cached(cfg.hf_hub_id) if pretrained else None)
        if pretrained and path is None:
            if not download_allowed(allow_download):
                raise BackboneError(
                    f"no weights for {name}: expected model.safetensors of {cfg.hf_hub_id} in "
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
        return _TimmStages(model.eval(), indices, is_vit).eval()

    return BackboneSpec(
        name=name,
        build=build,
        stages=tuple(Stage(*s) for s in stages),
        preprocessing=prep,
        source_domain="imagenet-1k",
        weights_path=lambda: _hub_cached(cfg.hf_hub_id),
        description=f"timm {timm_name}",
    )


@hookimpl
def register_backbones(register):
    """Register the curated timm backbones when timm is installed."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return
    for timm_name, stages in _MODELS.items():
        register(_make_spec(timm_name, stages))

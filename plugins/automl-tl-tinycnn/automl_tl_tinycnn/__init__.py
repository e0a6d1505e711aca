"""tinycnn: an example third-party backbone plugin for automl-tl.

A small 3-stage CNN (16/32/64 channels at strides 2/4/8, 64 px input). It is a TEMPLATE
for packaging your own backbone, not a pretrained model: unless you give it a weight file,
`pretrained=True` means a fixed, seeded random initialisation (the same numbers on every
machine), which is reproducible but has learned nothing.

The plugin is this module (torch-free: the network is in `net.py`, imported by `build`).
automl-tl finds it through the entry point declared in pyproject.toml
(`[project.entry-points.automl_tl] tinycnn = "automl_tl_tinycnn"`) and calls the one hook it
implements, `register_backbones(register)`. Its tests check it with the engine's own contract
check, `automl_tl.plugin.check_backbone`.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

# Everything a plugin needs comes from automl_tl.plugin, which imports no torch: automl-tl
# loads plugins to list their commands (`automl-tl --help`), and that must stay fast. The
# network (torch) lives in automl_tl_tinycnn.net, imported when a network is built.
from automl_tl.plugin import BackboneSpec, Preprocessing, Stage, hookimpl

__all__ = ["NAME", "STAGES", "PREPROCESSING", "SEED", "SPEC", "build", "register_backbones"]

try:
    __version__ = metadata.version("automl-tl-tinycnn")
except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

NAME = "tinycnn"
# Cut points: (name, channels, stride relative to the input). automl-tl's contract test
# checks these against the real feature maps: a map must be ceil(64 / stride) pixels wide.
STAGES = (Stage("stage1", 16, 2), Stage("stage2", 32, 4), Stage("stage3", 64, 8))
# Shorter side resized to 72, centre crop 64; mean/std are applied inside the exported graph.
PREPROCESSING = Preprocessing(crop_size=64, resize_size=72, mean=(0.5,) * 3, std=(0.5,) * 3)
# Seed of the deterministic "pretrained" initialisation used when no weight file exists.
SEED = 1234
# Where a real plugin would ship its trained weights (listed as package data in
# pyproject.toml). This template ships none, so the seeded initialisation is used.
DEFAULT_WEIGHTS = Path(__file__).with_name("tinycnn.safetensors")


def build(weights: str | Path | None = None, pretrained: bool = True, allow_download: bool = False):
    """The `BackboneSpec.build` of tinycnn (see automl_tl_tinycnn.net.build)."""
    from .net import build as build_net

    return build_net(weights, pretrained, allow_download)


def __getattr__(name: str):
    if name == "TinyCNN":  # the network class, with torch, on first use
        from .net import TinyCNN

        return TinyCNN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _weights_path() -> Path | None:
    return DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None


SPEC = BackboneSpec(
    name=NAME,
    build=build,
    stages=STAGES,
    preprocessing=PREPROCESSING,
    source_domain="none (template, not pretrained)",
    weights_path=_weights_path,
    description="tiny 3-stage CNN, 16/32/64 channels, 64 px (example plugin, not pretrained)",
    parameters=72_304,  # shown by `automl-tl backbones` without building the network
)


@hookimpl
def register_backbones(register):
    """Register the tinycnn backbone."""
    register(SPEC)

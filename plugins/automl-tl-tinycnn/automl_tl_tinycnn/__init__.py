"""tinycnn: an example third-party backbone plugin for automl-tl.

A small 3-stage CNN (16/32/64 channels at strides 2/4/8, 64 px input). It is a TEMPLATE
for packaging your own backbone, not a pretrained model: unless you give it a weight file,
`pretrained=True` means a fixed, seeded random initialisation (the same numbers on every
machine), which is reproducible but has learned nothing.

The plugin is this module. automl-tl finds it through the entry point declared in
pyproject.toml (`[project.entry-points.automl_tl] tinycnn = "automl_tl_tinycnn"`) and calls
the one hook it implements, `register_backbones(register)`.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from automl_tl.backbone import BackboneSpec, Stage, load_state_dict_file
from automl_tl.errors import BackboneError
from automl_tl.hookspecs import hookimpl
from automl_tl.preprocess import Preprocessing

__all__ = ["TinyCNN", "NAME", "STAGES", "PREPROCESSING", "SEED", "build", "register_backbones"]

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


class TinyCNN(nn.Module):
    """Three stages of (3x3 conv stride 2, BN, ReLU, 3x3 conv, BN, ReLU).

    The backbone contract: `forward_stages(x, upto)` returns the NCHW maps of stages
    0..upto (x already normalised), and `classifier` is the source classifier or None.
    """

    def __init__(self, widths: tuple[int, ...] = tuple(s.width for s in STAGES)):
        super().__init__()
        layers, c_in = [], 3
        for width in widths:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c_in, width, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = width
        self.stages = nn.ModuleList(layers)
        self.classifier = None  # no source task: nothing to reuse but the features

    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages[: upto + 1]:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_from(self, x: torch.Tensor, after: int, upto: int) -> list[torch.Tensor]:
        """Optional: the maps of stages after+1..upto from stage `after`'s map, so the top
        stages can be fine-tuned on cached maps instead of the whole network."""
        maps = []
        for stage in self.stages[after + 1 : upto + 1]:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x, len(self.stages) - 1)[-1]


def _he_init(net: TinyCNN) -> TinyCNN:
    """He-normal convolutions (torch's global RNG), identity batch norms."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def build(
    weights: str | Path | None = None, pretrained: bool = True, allow_download: bool = False
) -> TinyCNN:
    """The `BackboneSpec.build` of tinycnn; returns the network in eval mode.

    weights: a state dict file (.pth/.pt or .safetensors) saved from a TinyCNN; wins over
        everything else.
    pretrained: False gives a random initialisation from torch's global RNG (so
        torch.manual_seed makes it reproducible); True loads the default weight file when
        the package ships one, else the seeded initialisation (SEED), which leaves the
        global RNG untouched and gives the same numbers on every machine.
    allow_download: accepted for the contract; this plugin never downloads anything.
    """
    path = Path(weights) if weights else _weights_path() if pretrained else None
    if path is not None:
        with torch.random.fork_rng(devices=[]):  # the init is overwritten: spare the RNG
            net = TinyCNN()
        state = load_state_dict_file(path)  # BackboneError naming the file if unreadable
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError:
            ours = net.state_dict()
            missing = len(ours.keys() - state.keys())
            unexpected = len(state.keys() - ours.keys())
            raise BackboneError(
                f"weights file '{path}' does not match {NAME} ({missing} missing, "
                f"{unexpected} unexpected keys, or different shapes); save it with "
                "torch.save(TinyCNN().state_dict(), PATH)"
            ) from None
        return net.eval()
    if not pretrained:
        return _he_init(TinyCNN()).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return _he_init(TinyCNN()).eval()


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
)


@hookimpl
def register_backbones(register):
    """Register the tinycnn backbone."""
    register(SPEC)

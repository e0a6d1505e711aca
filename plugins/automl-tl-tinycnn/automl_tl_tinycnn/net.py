"""The tinycnn network (torch): what `automl_tl_tinycnn.build` returns."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from automl_tl.plugin import BackboneError, load_state_dict_file

from . import NAME, SEED, STAGES, _weights_path

__all__ = ["TinyCNN", "build"]


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

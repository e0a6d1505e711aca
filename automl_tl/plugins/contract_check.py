"""The backbone contract as a check a plugin's own tests can run (`automl_tl.plugin
.check_backbone`), and which every built-in backbone passes (tests/test_backbone_contract.py).

It builds the network (random weights unless given one) and checks what the engine relies on:
the declared stage table against real feature maps, the `BackboneNet` protocol, eval mode,
`forward_from` continuing `forward_stages` exactly where it is offered, and the declared
parameter count.
"""

from __future__ import annotations

import math

from ..core.contract import BackboneNet, BackboneSpec, TrainsFromMaps

__all__ = ["check_backbone", "check_spec"]


class ContractError(AssertionError):
    """A backbone does not keep the contract (the message says which rule and how)."""


def _require(ok: bool, spec: BackboneSpec, rule: str) -> None:
    if not ok:
        raise ContractError(f"backbone {spec.name!r}: {rule}")


def check_spec(spec: BackboneSpec) -> None:
    """The registration alone: unique stage names, strides that never decrease, positive
    widths, a source domain, a crop no larger than the resize."""
    names, strides = [s.name for s in spec.stages], [s.stride for s in spec.stages]
    _require(bool(spec.stages) and len(set(names)) == len(names), spec, "stage names unique")
    _require(strides == sorted(strides) and strides[0] >= 1, spec, "strides non-decreasing")
    _require(all(s.width > 0 for s in spec.stages), spec, "every stage width positive")
    _require(bool(spec.source_domain), spec, "source_domain named")
    prep = spec.preprocessing
    _require(prep.crop_size <= prep.resize_size, spec, "crop_size <= resize_size")


def check_backbone(spec: BackboneSpec, net=None, batch: int = 2) -> None:
    """Build `spec` (unless `net` is given) and check the whole contract; raises
    ContractError (an AssertionError) naming the first rule broken."""
    import torch

    check_spec(spec)
    if net is None:
        torch.manual_seed(0)
        net = spec.build(pretrained=False)
    _require(isinstance(net, BackboneNet), spec, "build() returns a BackboneNet "
             "(forward_stages(x, upto) and a classifier attribute)")  # fmt: skip
    _require(not net.training, spec, "build() returns the network in eval mode")
    if spec.parameters is not None:
        count = sum(p.numel() for p in net.parameters())
        _require(count == spec.parameters, spec, f"declares {spec.parameters} parameters, "
                 f"the network has {count}")  # fmt: skip
    prep, last = spec.preprocessing, len(spec.stages) - 1
    x = torch.rand(batch, 3, prep.crop_size, prep.crop_size, generator=torch.Generator())
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        maps = net.forward_stages((x - mean) / std, last)
        _require(len(maps) == last + 1, spec, f"forward_stages(x, {last}) returns {last + 1} maps")
        for i, (m, stage) in enumerate(zip(maps, spec.stages, strict=True)):
            side = math.ceil(prep.crop_size / stage.stride)
            # Only the last stage may be a global 1x1 map (a ViT's class token).
            sides = [(side, side), (1, 1)] if i == last else [(side, side)]
            _require(m.shape[1] == stage.width and tuple(m.shape[2:]) in sides, spec,
                     f"stage {stage.name!r} declared {stage.width} x {side} x {side}, "
                     f"its map is {tuple(m.shape[1:])}")  # fmt: skip
        mid = len(spec.stages) // 2
        _require(len(net.forward_stages((x - mean) / std, mid)) == mid + 1, spec,
                 "forward_stages stops at the stage asked for")  # fmt: skip
        if isinstance(net, TrainsFromMaps):
            for after in sorted({0, last // 2, last - 1} - {-1}):
                rest = net.forward_from(maps[after], after, last)
                _require(len(rest) == last - after, spec, "forward_from returns the stages "
                         f"after {after}")  # fmt: skip
                for got, want in zip(rest, maps[after + 1 :], strict=True):
                    close = torch.allclose(got, want, rtol=1e-4, atol=1e-4)
                    _require(close, spec, f"forward_from({after}) reproduces forward_stages")

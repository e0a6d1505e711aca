"""Two backbones on one input: the chosen backbone's view with a second backbone's view beside
it, as one feature space a frozen head reads and one graph the model exports.

The second backbone runs at the first one's input (resize, crop and interpolation; its own
mean and std), so the rows a head is trained on are exactly what the exported model computes
from the one image it is given: the second backbone's rows are a feature space of their own
(`FeatureCache` of that backbone at the first one's preprocessing), never its rows at its own
input, which a client could not reproduce from one input tensor.

`PairedFeatures` reads like the first backbone's FeatureCache (analysis, views, memo, stats
are the first one's); only the pair's own view name gives both rows side by side."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..core.files import file_sha256
from .rows import StoredRows, joined_rows
from .views import JOINER, View, frozen_views

__all__ = ["PAIR", "PairedFeatures", "SideBySide", "at_input_of", "pair_view", "primary_view"]

PAIR = " & "  # "<first view> & <second backbone>:<second view>": a pair's view name


def pair_view(first: View, second_backbone: str, second: View) -> View:
    """The pair's view: named after both, the first one's stage, grid and joined members
    (what the plan's cut and grid describe), the widths summed."""
    return dataclasses.replace(
        first,
        name=f"{first.name}{PAIR}{second_backbone}:{second.name}",
        width=first.width + second.width,
    )


def primary_view(name: str) -> str:
    """The first backbone's view of a view name (itself when it is not a pair's)."""
    return name.split(PAIR, 1)[0]


def at_input_of(spec, first_spec):
    """`spec` taking `first_spec`'s input: its resize, crop and interpolation, its own
    normalisation (which its graph applies)."""
    own, other = spec.preprocessing, first_spec.preprocessing
    prep = dataclasses.replace(
        own,
        crop_size=other.crop_size,
        resize_size=other.resize_size,
        interpolation=other.interpolation,
    )
    return dataclasses.replace(spec, preprocessing=prep)


def views_for(spec, name: str) -> list[View]:
    """The single-stage views of `spec` (at its input) that make view `name` (its members
    when it is a joined view); a view the spec does not have at this input raises KeyError."""
    known = {v.name: v for v in frozen_views(spec)}
    return [known[m] for m in name.split(JOINER)]


class SideBySide(nn.Module):
    """Two feature extractors on the same input, their features concatenated (the pair's
    extractor in the exported model)."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first(x).flatten(1), self.second(x).flatten(1)], dim=1)


class PairedFeatures:
    """The first backbone's FeatureCache with `second` (a FeatureCache of the second backbone
    at the first one's input, holding the members of view `second_view`) beside its view
    `first_view`. Everything but the pair's rows is the first cache's."""

    def __init__(self, first, first_view: View, second, second_view: str):
        self.first, self.second = first, second
        self.first_view = first_view
        self.second_view = second_view
        width = sum(v.width for v in views_for(second.spec, second_view))
        second_as_view = View(second_view, "", 0, 1, width)
        self.view = pair_view(first_view, second.spec.name, second_as_view)
        self.space = f"{first.space}{PAIR}{second.space}"

    def __getattr__(self, name):  # spec, net, memo, stats, views, view_names, ...
        return getattr(self.first, name)

    @property
    def stats(self):
        """The first cache's embedding counts with the second one's rows and seconds added:
        the pair's features are both."""
        a, b = self.first.stats, self.second.stats
        return dataclasses.replace(
            a,
            computed=a.computed + b.computed,
            seconds=a.seconds + b.seconds,
            not_stored=a.not_stored + b.not_stored,
        )

    @property
    def backbones(self) -> str:
        return f"{self.first.spec.name} + {self.second.spec.name}"

    def rows(self, samples, view: str) -> StoredRows:
        if view != self.view.name:
            return self.first.rows(samples, view)
        first = self.first.rows(samples, self.first_view.name)
        return joined_rows([first, self.second.rows(samples, self.second_view)])

    def view_rows(self, samples):
        return lambda name: self.rows(samples, name)

    def missing(self, samples):
        first = self.first.missing(samples)  # read once: each call queries the store
        seen = {s.digest for s in first}
        return [*first, *(s for s in self.second.missing(samples) if s.digest not in seen)]

    def ensure(self, samples) -> None:
        """Both caches' missing rows, one backbone after the other: the first one's session
        is let go before the second one's starts (both open held 1 GB more on imagenette)."""
        self.first.ensure(samples)
        self.first.release()
        self.second.ensure(samples)

    def release(self) -> None:
        self.first.release()
        self.second.release()

    def close(self) -> None:
        self.first.close()
        self.second.close()

    def onnx_path(self):
        """None: the pair's model is traced whole (two graphs on one input), not composed."""
        return None

    def head_extractor(self, cut: int, grid: int, parts) -> nn.Module:
        """The pair's extractor: the first backbone's (`cut`, `grid`, `parts`) beside the
        second one's view."""
        second = views_for(self.second.spec, self.second_view)
        last = second[-1]
        taps = tuple((v.stage_index, v.grid) for v in second) if len(second) > 1 else ()
        return SideBySide(
            self.first.head_extractor(cut, grid, parts),
            self.second.head_extractor(last.stage_index, last.grid, taps),
        )

    def record(self) -> dict:
        """The plan's `paired` field: the second backbone, its view, input, normalisation
        and the sha256 of its default weights (the search uses no others)."""
        spec = self.second.spec
        prep = spec.preprocessing
        path = spec.weights_path()
        return {
            "backbone": spec.name,
            "view": self.second_view,
            "input": prep.crop_size,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "weights_sha256": file_sha256(path) if path else None,
        }

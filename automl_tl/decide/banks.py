"""Source banks: built from folders of source-domain images, and loaded for a fit (checked to be
of the fit's backbone)."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.console import Console
from ..core.errors import AutoTLError
from ..core.files import file_sha256
from ..data.files import expand_paths
from ..features.embed import embed
from ..features.extractor import FeatureExtractor
from .similarity import SourceBank, bank_file, image_bank

__all__ = ["build_bank", "bank_backbone", "load_bank"]


def build_bank(
    folder: str | os.PathLike,
    spec,
    weights: str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 32,
    quiet: bool = True,
) -> tuple[Path, SourceBank]:
    """Embed every image under `folder` with the last stage of backbone `spec`; save the bank."""
    files = expand_paths([folder])
    if len(files) < 2:
        raise AutoTLError(f"'{folder}' holds {len(files)} image files; a bank needs at least 2")
    net = spec.build(weights)
    fx = FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1)
    feats = embed(fx, files, spec.preprocessing, batch_size, Console(quiet=quiet))[-1]
    bank = image_bank(spec.name, feats, str(folder))
    weights_file = Path(weights) if weights else spec.weights_path()
    target = (
        Path(out)
        if out
        else bank_file(spec.name, file_sha256(weights_file) if weights_file else None)
    )
    return bank.save(target), bank


def bank_backbone(path: str | os.PathLike) -> str:
    """The backbone the source bank at `path` was built for."""
    return SourceBank.load(path).backbone


def load_bank(path: str | os.PathLike, spec) -> SourceBank:
    """The source bank at `path`, which must have been built for backbone `spec`."""
    bank = SourceBank.load(path)
    if bank.backbone != spec.name:
        raise AutoTLError(
            f"source bank '{path}' was built for backbone {bank.backbone}, not {spec.name}; "
            f"build one with --backbone {spec.name}"
        )
    return bank

"""Building source banks from folders of source-domain images."""

from __future__ import annotations

import os
from pathlib import Path

from .backbone import FeatureExtractor, file_sha256
from .console import Console
from .embed import embed
from .errors import AutoTLError
from .inference import expand_paths
from .plugins import get_plugins
from .similarity import SourceBank, bank_file, image_bank

__all__ = ["build_bank"]


def build_bank(
    folder: str | os.PathLike,
    backbone: str = "efficientnet_lite0",
    weights: str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 32,
    quiet: bool = True,
) -> tuple[Path, SourceBank]:
    """Embed every image under `folder` with the backbone's last stage; save the bank."""
    spec = get_plugins().backbone(backbone)
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

"""Sample data for the quick start: scikit-learn's bundled digits written as PNG class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_digits"]


def write_digits(
    folder: str | Path,
    per_class: int = 40,
    size: int = 64,
    digits: tuple[int, ...] = tuple(range(10)),
) -> Path:
    """Write `per_class` images of each digit in `digits` as `folder/<digit>/<n>.png` (offline)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    folder = Path(folder)
    written = {d: 0 for d in digits}
    for image, target in zip(bunch.images, bunch.target, strict=True):
        if target not in written or written[target] >= per_class:
            continue
        out = folder / str(target)
        out.mkdir(parents=True, exist_ok=True)
        grey = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink, white paper
        Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(
            out / f"{written[target]:04d}.png"
        )
        written[target] += 1
    return folder

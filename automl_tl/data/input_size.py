"""TODO."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from statistics import median

import numpy as np
from PIL import Image

from ..core.errors import AutoTLError
from .preprocess import Preprocessing


def training_preprocessing(
    prep: Preprocessing, sizes: Sequence[tuple[int, int]], factor: int = 4, floor: int = 64
) -> Preprocessing:
    """The input size to fine-tune at, from the images' (width, height).

    Images far smaller than the backbone's input are upscaled several times over (mnist's
    28x28 to 224x224) and pay for pixels that hold no detail. The crop becomes `factor` x the
    median shorter side, rounded up to a multiple of 32 (the backbones' total stride), at
    least `floor` and never above the backbone's own; resize_size keeps its ratio to the crop.
    28x28 -> 128 (EfficientNet-Lite0 forward+backward about 2.7x faster per image than 224).
    """
    shorter = [min(w, h) for w, h in sizes if w > 0 and h > 0]
    if not shorter:
        return prep
    crop = max(floor, 32 * math.ceil(factor * median(shorter) / 32))
    return prep if crop >= prep.crop_size else _at_crop(prep, crop)


def _at_crop(prep: Preprocessing, crop: int) -> Preprocessing:
    """`prep` at crop size `crop`, its resize size keeping its ratio to the crop."""
    resize = round(crop * prep.resize_size / prep.crop_size)
    return dataclasses.replace(prep, crop_size=crop, resize_size=resize)


# Training images whose headers are read to choose the input size (a random sample).
SIZE_SAMPLE = 256


def choose_input(
    prep: Preprocessing, setting: str | int, paths: Sequence, seed: int = 0
) -> tuple[Preprocessing, str | None]:
    """(the preprocessing a run uses, the reason when it is not the backbone's own).

    `setting`: "auto" sizes the input from the median shorter side of up to SIZE_SAMPLE
    training images (`training_preprocessing`; headers only, no decoding), "backbone" keeps
    the backbone's own, and an integer is the crop size itself (a multiple of 32, 32 to the
    backbone's own)."""
    own = prep.crop_size
    if setting == "backbone":
        return prep, None
    if setting != "auto":
        try:
            crop = int(setting)
        except (TypeError, ValueError):
            crop = -1
        if crop < 32 or crop > own or crop % 32:
            raise AutoTLError(
                f"input size {setting!r} is not usable; pass auto, backbone or a multiple of "
                f"32 from 32 to {own} (this backbone's own input)"
            )
        if crop == own:
            return prep, None
        reason = f"input size: {crop}x{crop} as given (the backbone's own is {own})"
        return _at_crop(prep, crop), reason
    order = np.random.default_rng(seed).permutation(len(paths))[:SIZE_SAMPLE]
    sizes = []
    for i in order:
        try:
            with Image.open(paths[i]) as img:
                sizes.append(img.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # the audit already reported it; the size comes from the others
    chosen = training_preprocessing(prep, sizes)
    if chosen.crop_size == own:
        return prep, None
    side = median(min(w, h) for w, h in sizes)
    return chosen, (
        f"input size: {chosen.crop_size}x{chosen.crop_size}, not the backbone's {own}x{own}: "
        f"the training images' median shorter side is {side:g} px (of {len(sizes)} read), "
        "and upscaling them further adds pixels without detail at several times the cost "
        "(--input-size backbone keeps the backbone's own)"
    )

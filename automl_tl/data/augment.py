"""Training augmentations of fine-tuning on images: the policies (what crops and flips each
allows, as data) and the torchvision transforms built from them. torchvision is imported when
a transform is built: importing it (its model zoo, torch._dynamo) costs a warm re-fit a
second it has no use for."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .preprocess import Preprocessing

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = ["Augment", "AUGMENTS", "train_transform", "tensor_train_transform"]


@dataclasses.dataclass(frozen=True)
class Augment:
    """The geometric half of a training augmentation: a random crop of `scale` of the image's
    area at an aspect `ratio`, resized to the input, then a horizontal flip if `flip`."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True


AUGMENTS = {
    # A new head learns from scratch: strong crops and flips (the usual ImageNet recipe).
    "standard": Augment(),
    # Crops close to the evaluation crop and no flip, so each cell of a pooled grid still sees
    # what a warm head was fitted on (a flip moves left cells right; digits change meaning
    # under it). Measured for warm fine-tuning (benchmarks/warm_augment.py), which still
    # trains without augmentation: this was not better on the full datasets.
    "gentle": Augment(scale=(0.75, 1.0), ratio=(0.9, 1.1), flip=False),
}


def _crop_flip(prep: Preprocessing, policy: str = "standard") -> list:
    """The geometric half of the training augmentation (PIL images and tensors alike)."""
    from torchvision.transforms import v2

    aug = AUGMENTS[policy]
    crop = v2.RandomResizedCrop(
        prep.crop_size,
        scale=aug.scale,
        ratio=aug.ratio,
        interpolation=v2.InterpolationMode(prep.interpolation),
        antialias=True,
    )
    return [crop, v2.RandomHorizontalFlip()] if aug.flip else [crop]


def train_transform(prep: Preprocessing, policy: str = "standard") -> v2.Compose:
    """Training augmentation: PIL RGB -> float32 CHW in [0, 1] of size crop_size."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose(
        [
            *_crop_flip(prep, policy),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def tensor_train_transform(prep: Preprocessing, policy: str = "standard") -> v2.Compose:
    """The augmentation of `train_transform` on a uint8 CHW tensor -> float32 CHW in [0, 1].

    Crop and flip run on uint8 (a quarter of the bytes), colour jitter on float (no rounding
    between its steps). On one core 1-2 ms per image from the decoded store, against 4.5-5.5 ms
    for decoding the JPEG and augmenting the PIL image (hymenoptera photos, 2-core EPYC).
    """
    import torch
    from torchvision.transforms import v2

    return v2.Compose(
        [
            *_crop_flip(prep, policy),
            v2.ToDtype(torch.float32, scale=True),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    )

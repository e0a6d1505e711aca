"""Images for fine-tuning: the augmented dataset, its epoch-tagged sampler and the loader."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from .errors import AutoTLError, DataError
from .preprocess import Preprocessing, load_for_model, load_rgb

__all__ = [
    "ImageDataset",
    "mix_seed",
    "auto_workers",
    "class_weights",
    "close_loader",
    "make_loader",
    "train_transform",
]


def class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Balanced class weights n / (k * count_c); a class absent from `labels` gets n / k."""
    y = torch.as_tensor(list(labels), dtype=torch.long)
    counts = torch.bincount(y, minlength=n_classes).double().clamp(min=1)
    return (len(y) / (n_classes * counts)).float()


_INTERPOLATION = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


def train_transform(prep: Preprocessing) -> v2.Compose:
    """Training augmentation: PIL RGB -> float32 CHW in [0, 1] of size crop_size."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                prep.crop_size,
                scale=(0.35, 1.0),
                interpolation=_INTERPOLATION[prep.interpolation],
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def mix_seed(*numbers: int) -> int:
    """A stable 63-bit seed from integers."""
    digest = hashlib.blake2b(repr(numbers).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ImageDataset(Dataset):
    """(path, label) items -> (float32 CHW in [0, 1], label).

    Indexed by `(epoch, i)` (what the training sampler yields) or plain `i` (epoch 0).
    With `augment`, sample i of an epoch is augmented with a seed of (seed, epoch, i);
    without, it is the eval preprocessing (`load_for_model`).
    """

    def __init__(self, items, prep: Preprocessing, augment: bool = True, seed: int = 0):
        self.items = [(str(p), int(y)) for p, y in items]
        self.prep, self.seed = prep, seed
        self.transform = train_transform(prep) if augment else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path, label = self.items[index]
        try:
            if self.transform is None:
                x = torch.tensor(load_for_model(path, self.prep)).permute(2, 0, 1)
                return x.float() / 255.0, label
            img = load_rgb(path, draft_size=self.prep.resize_size)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot decode training image '{path}': {e}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            return self.transform(img), label


class _EpochSampler(DistributedSampler):
    """This process's shuffled shard of the training set, each index tagged with the epoch."""

    def __iter__(self):
        return ((self.epoch, i) for i in super().__iter__())


def auto_workers(device: torch.device, world: int) -> int:
    """Loader processes when the config leaves it open.

    On CPU the model's compute needs every core: on 2 cores, decoding + augmenting costs
    15-20 ms/img against 130-250 ms/img of EfficientNet-Lite0 forward+backward, and 1 or 2
    workers made an epoch 20-30% slower (process start-up, contention), so none below 8 cores
    per process. On GPU the CPU only feeds it: up to 4 per process.
    """
    cores = max(1, (os.cpu_count() or 1) // world)
    if device.type == "cuda":
        return min(4, cores - 1)
    return 0 if cores < 8 else min(2, cores // 8)


def make_loader(dataset, config, rank: int, world: int, device) -> DataLoader:
    if config.batch_size < world:
        raise AutoTLError(
            f"batch_size={config.batch_size} is smaller than the {world} processes; raise it"
        )
    local = config.batch_size // world
    sampler = _EpochSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
    # Avoid a last batch of one image (degenerate BatchNorm statistics).
    drop_last = len(sampler) > local and len(sampler) % local == 1
    workers = auto_workers(device, world) if config.num_workers is None else config.num_workers
    return DataLoader(
        dataset,
        batch_size=local,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        # Its own generator: creating an iterator must not draw from the global RNG (dropout's),
        # which it would do once per epoch without workers but once per run with them.
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
    )


def close_loader(loader: DataLoader) -> None:
    """Stop persistent loader workers now rather than at garbage collection."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader._iterator = None

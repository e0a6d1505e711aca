"""Images for fine-tuning: the augmented dataset, its epoch-tagged sampler and the loader.

Training images are decoded once per run (shorter side at most `resize_size`, JPEGs through
draft mode) and kept in memory as uint8 tensors within a cap; augmentation then runs on those
tensors. Validation crops are decoded once too (`EvalImages`). `ImageDataset(decode_once=False)`
keeps the earlier path (decode + PIL augmentation of every item every epoch) for comparison.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..core.console import Console
from ..core.errors import AutoTLError, DataError
from ..core.machine import cpu_count
from .augment import tensor_train_transform, train_transform
from .preprocess import Preprocessing, load_for_model, load_rgb

__all__ = [
    "DecodedImages",
    "EvalImages",
    "ImageDataset",
    "mix_seed",
    "auto_workers",
    "class_weights",
    "close_loader",
    "load_train_image",
    "make_loader",
    "memory_cap",
]

# Share of the available memory that decoded images may take (training and validation each).
STORE_SHARE = 0.25
_DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Balanced class weights n / (k * count_c); a class absent from `labels` gets n / k."""
    y = torch.as_tensor(list(labels), dtype=torch.long)
    counts = torch.bincount(y, minlength=n_classes).double().clamp(min=1)
    return (len(y) / (n_classes * counts)).float()


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def load_train_image(path, prep: Preprocessing) -> torch.Tensor:
    """Decode a training image once: uint8 (3, H, W), shorter side min(its own, resize_size).

    JPEGs go through draft mode (DCT-domain downscaling). Smaller images are not enlarged
    (RandomResizedCrop scales them anyway, and 28x28 digits stay 2 KB). The tensor is a
    channels-last view of the decoded HWC array: the uint8 resize kernels are fastest on it.
    """
    img = load_rgb(path, draft_size=prep.resize_size)
    w, h = img.size
    if min(w, h) > prep.resize_size:
        scale = prep.resize_size / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, _RESAMPLE[prep.interpolation])
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def _eval_tensor(path, prep: Preprocessing) -> torch.Tensor:
    """uint8 (3, crop, crop): exactly the pixels of `load_for_model`."""
    arr = np.require(load_for_model(path, prep), requirements="W")  # PIL's may be read-only
    return torch.from_numpy(arr).permute(2, 0, 1)


def memory_cap(share: float = STORE_SHARE) -> int:
    """Bytes decoded images may take: `share` of what this process can still allocate."""
    from ..core.machine import available_memory

    return int(available_memory() * share)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class DecodedImages:
    """Images by index, each decoded once and kept while the kept bytes stay within `cap_bytes`;
    beyond the cap an image is decoded again on every access.

    Kept or not, an image has the same pixels, so training does not depend on the free memory
    (a resume on a busier machine repeats an uninterrupted run).
    """

    def __init__(
        self,
        paths: Sequence,
        decode: Callable[[str], torch.Tensor],
        cap_bytes: int | None = None,
        what: str = "training image",
    ):
        self.paths = [str(p) for p in paths]
        self.decode, self.what = decode, what
        self.cap = memory_cap() if cap_bytes is None else int(cap_bytes)
        self.nbytes, self.full = 0, False
        self._kept: list[torch.Tensor | None] = [None] * len(self.paths)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:  # loader workers started by spawn get a copy
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def kept(self) -> int:
        return sum(x is not None for x in self._kept)

    def _decode(self, i: int) -> torch.Tensor:
        try:
            return self.decode(self.paths[i])
        except _DECODE_ERRORS as e:
            raise DataError(f"cannot decode {self.what} '{self.paths[i]}': {e}") from None

    def _keep(self, i: int, x: torch.Tensor) -> None:
        size = x.untyped_storage().nbytes()
        with self._lock:
            if self._kept[i] is not None or self.full:
                return
            if self.nbytes + size > self.cap:
                self.full = True
                return
            self._kept[i] = x
            self.nbytes += size

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self._kept[i]
        if x is None:
            x = self._decode(i)
            self._keep(i, x)
        return x

    def fill(self, console: Console | None = None, threads: int | None = None) -> None:
        """Decode every image not kept yet, `threads` at a time (Pillow's decoders release the
        GIL), until the cap is reached; says once when it is."""
        console = console or Console(quiet=True)
        todo = deque(i for i, x in enumerate(self._kept) if x is None)
        if not todo or self.full:
            return
        if threads is None:
            from ..core.machine import available_cores

            threads = min(4, available_cores())
        with console.progress("decode", len(todo)) as bar, ThreadPoolExecutor(threads) as pool:
            pending: deque = deque()
            while (todo and not self.full) or pending:
                # A short queue: once the cap is reached, nothing more is decoded.
                while todo and not self.full and len(pending) < 2 * threads:
                    i = todo.popleft()
                    pending.append((i, pool.submit(self._decode, i)))
                i, future = pending.popleft()
                self._keep(i, future.result())
                bar.update(1)
        if self.full:
            console.note(
                f"decoded {self.what}s exceed their memory cap ({_gib(self.cap)}): "
                f"{self.kept} of {len(self)} are kept, the others are decoded again on every "
                "use (slower, same pixels)"
            )


class EvalImages:
    """Validation images as the exported model sees them (uint8 centre crops, the pixels of
    `load_for_model`), decoded on the first full pass and kept when they fit `cap_bytes`.

    Decoded with PIL, not `decode.load_image`: its torchvision resize differs by 1-2 levels
    on some pixels, and validation should score what `automl_tl.export.predictor` will see.
    """

    def __init__(self, paths: Sequence, prep: Preprocessing, cap_bytes: int | None = None):
        self.paths = [str(p) for p in paths]
        self.prep = prep
        need = len(self.paths) * 3 * prep.crop_size**2
        self.keep = need <= (memory_cap() if cap_bytes is None else cap_bytes)
        self._kept: np.ndarray | None = None

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """float32 NCHW batches in [0, 1] (memory in channels-last order once kept)."""
        from .batches import iter_batches

        if self._kept is not None:
            for i in range(0, len(self.paths), batch_size):
                chunk = self._kept[i : i + batch_size].transpose(0, 3, 1, 2)
                yield np.divide(chunk, np.float32(255.0), dtype=np.float32)
            return
        if not self.keep:
            yield from iter_batches(self.paths, self.prep, batch_size)
            return
        decoded: dict[str, np.ndarray] = {}

        def keeping(path, prep):
            decoded[str(path)] = arr = load_for_model(path, prep)
            return arr

        yield from iter_batches(self.paths, self.prep, batch_size, loader=keeping)
        # Only a pass that ran to the end is kept (a consumer may stop part-way).
        size = self.prep.crop_size
        kept = np.empty((len(self.paths), size, size, 3), dtype=np.uint8)
        for i, path in enumerate(self.paths):
            kept[i] = decoded[path]
        self._kept = kept


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread. Per-image augmentation is many small ops; with 2
    OpenMP threads on 2 cores shared with another busy process they took 8-150 ms per image
    instead of 1-2 ms (the threads spin-wait for each other at every op)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def mix_seed(*numbers: int) -> int:
    """A stable 63-bit seed from integers."""
    digest = hashlib.blake2b(repr(numbers).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ImageDataset(Dataset):
    """(path, label) items -> (float32 CHW in [0, 1], label).

    Indexed by `(epoch, i)` (what the training sampler yields) or plain `i` (epoch 0).
    With `augment`, sample i of an epoch is augmented (`policy`: a name in AUGMENTS) with a
    seed of (seed, epoch, i); without, it is the eval preprocessing (`load_for_model`).

    `decode_once` (default): images are decoded once into `images` (a `DecodedImages`,
    filled up front by `fill`, within `cap_bytes`) and augmented as uint8 tensors. Without it,
    every access decodes the file and augments the PIL image (the earlier path).
    """

    def __init__(
        self,
        items,
        prep: Preprocessing,
        augment: bool = True,
        seed: int = 0,
        decode_once: bool = True,
        cap_bytes: int | None = None,
        policy: str = "standard",
    ):
        self.items = [(str(p), int(y)) for p, y in items]
        self.prep, self.seed = prep, seed
        self.images: DecodedImages | None = None
        if decode_once:
            paths = [p for p, _ in self.items]
            decode = load_train_image if augment else _eval_tensor
            self.images = DecodedImages(paths, functools.partial(decode, prep=prep), cap_bytes)
            self.transform = tensor_train_transform(prep, policy) if augment else None
        else:
            self.transform = train_transform(prep, policy) if augment else None

    def __len__(self) -> int:
        return len(self.items)

    def fill(self, console: Console | None = None) -> None:
        """Decode every image now (before loader workers fork, so they share it)."""
        if self.images is not None:
            self.images.fill(console)

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        if self.images is None:
            return self._decode_and_augment(key)
        with _one_thread():
            return self._augment(key)

    def __getitems__(self, keys: list) -> list[tuple[torch.Tensor, int]]:
        """A batch, as the loader asks for it: on one thread for the whole batch."""
        if self.images is None:
            return [self._decode_and_augment(key) for key in keys]
        with _one_thread():
            return [self._augment(key) for key in keys]

    def _augment(self, key) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        x, label = self.images[index], self.items[index][1]
        if self.transform is None:
            return x.float() / 255.0, label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            return self.transform(x), label

    def _decode_and_augment(self, key) -> tuple[torch.Tensor, int]:
        """The earlier path: decode the file and augment the PIL image on every access."""
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
    cores = max(1, cpu_count() // world)
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

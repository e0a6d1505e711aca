"""Image files to model input: float32 NCHW batches in [0, 1], decoded by worker threads while
the previous batch computes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core.machine import cpu_count
from .preprocess import Preprocessing, load_for_model

__all__ = ["iter_batches"]

Loader = Callable[[Path, Preprocessing], np.ndarray]


def _fill(batch: np.ndarray, i: int, path: Path, prep: Preprocessing, loader: Loader) -> None:
    """Decode one image into row i of a float32 NCHW batch (same values as batch_to_float)."""
    np.divide(loader(path, prep).transpose(2, 0, 1), np.float32(255.0), out=batch[i])


def iter_batches(
    paths: Sequence[Path],
    prep: Preprocessing,
    batch_size: int,
    prefetch: int = 2,
    loader: Loader = load_for_model,
) -> Iterator[np.ndarray]:
    """Yield float32 NCHW batches in [0, 1]; worker threads decode the next batches meanwhile.

    `loader(path, prep)` returns uint8 (crop, crop, 3): the PIL `load_for_model` by default,
    `decode.load_image` (torchvision.io, same pixels) for speed. Workers also do the float
    conversion, so the consumer's thread only waits.
    """
    workers = max(1, min(4, cpu_count()))
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    size = prep.crop_size

    def submit(chunk) -> tuple[np.ndarray, list[Future]]:
        batch = np.empty((len(chunk), 3, size, size), dtype=np.float32)
        return batch, [pool.submit(_fill, batch, i, p, prep, loader) for i, p in enumerate(chunk)]

    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque(submit(chunk) for chunk in chunks[:prefetch])
        for nxt in chunks[prefetch:] + [None] * min(prefetch, len(chunks)):
            batch, futures = pending.popleft()
            if nxt is not None:
                pending.append(submit(nxt))
            for f in futures:
                f.result()  # re-raises a decoding error
            yield batch

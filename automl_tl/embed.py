"""Batched frozen feature extraction, image decoding overlapped with compute."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .backbone import FeatureExtractor
from .console import Console
from .decode import load_image
from .distributed import gather_rows, world
from .preprocess import Preprocessing, load_for_model
from .runtime import make_runner, pick_batch_size

__all__ = ["iter_batches", "embed", "pick_device"]

Loader = Callable[[Path, Preprocessing], np.ndarray]


def pick_device() -> torch.device:
    """CUDA when this torch build sees a GPU, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    workers = max(1, min(4, os.cpu_count() or 1))
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


def embed(
    extractor: FeatureExtractor,
    paths: Sequence[Path],
    prep: Preprocessing,
    batch_size: int | None = None,
    console: Console | None = None,
    engine: str = "auto",
    model_dir: str | Path | None = None,
    label: str = "embed",
) -> list[np.ndarray]:
    """Pooled features of every stage up to the extractor's cut, one (N, width) array per stage.

    Args:
        batch_size: images per forward pass; None picks it from the available memory.
        engine: "onnxruntime", "torch" or "auto" (see `runtime.make_runner`: onnxruntime on
            CPU, torch on CUDA or when forward hooks are registered on the extractor).
        model_dir: where the onnxruntime engine keeps its exports to reuse them across
            runs; None keeps them in a temporary folder for this process.
        label: the progress bar's name.

    Under torch.distributed each process embeds `paths[rank::world]` and every process
    receives all rows, in order.
    """
    console = console or Console(quiet=True)
    rank, size = world()
    if len(paths) < size:  # too few to shard: every process embeds everything
        rank, size = 0, 1
    total, paths = len(paths), list(paths)[rank::size]
    runner = make_runner(
        extractor, prep.crop_size, engine, model_dir, console=console, n_images=len(paths)
    )
    batch_size = pick_batch_size(prep.crop_size, batch_size, n_images=len(paths))
    outputs: list[list[np.ndarray]] = []
    with console.progress(label, len(paths)) as bar:
        for batch in iter_batches(paths, prep, batch_size, loader=load_image):
            feats = runner.run(batch)
            if not outputs:
                outputs = [[] for _ in feats]
            for store, f in zip(outputs, feats, strict=True):
                store.append(f)
            bar.update(len(batch))
    if size > 1:
        local = np.concatenate([np.concatenate(store) for store in outputs], axis=1)
        split_at = np.cumsum([store[0].shape[1] for store in outputs])[:-1]
        full = gather_rows(torch.from_numpy(local).to(pick_device()), total).cpu().numpy()
        return np.split(full, split_at, axis=1)
    return [np.concatenate(store) for store in outputs]

"""Batched frozen feature extraction, image decoding overlapped with compute."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .backbone import FeatureExtractor
from .console import Console
from .distributed import gather_rows, world
from .preprocess import Preprocessing, batch_to_float, load_for_model

__all__ = ["iter_batches", "embed", "pick_device"]


def pick_device() -> torch.device:
    """CUDA when this torch build sees a GPU, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def iter_batches(
    paths: Sequence[Path], prep: Preprocessing, batch_size: int, prefetch: int = 2
) -> Iterator[np.ndarray]:
    """Yield float32 NCHW batches; worker threads decode the next batches meanwhile."""
    workers = max(1, min(4, os.cpu_count() or 1))
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for chunk in chunks[:prefetch]:
            pending.append([pool.submit(load_for_model, p, prep) for p in chunk])
        for nxt in chunks[prefetch:] + [None] * min(prefetch, len(chunks)):
            futures = pending.popleft()
            if nxt is not None:
                pending.append([pool.submit(load_for_model, p, prep) for p in nxt])
            yield batch_to_float([f.result() for f in futures])


@torch.inference_mode()
def embed(
    extractor: FeatureExtractor,
    paths: Sequence[Path],
    prep: Preprocessing,
    batch_size: int = 32,
    console: Console | None = None,
) -> list[np.ndarray]:
    """Pooled features of every stage up to the extractor's cut, one (N, width) array per stage.

    Under torch.distributed each process embeds `paths[rank::world]` and every process
    receives all rows, in order.
    """
    console = console or Console(quiet=True)
    rank, size = world()
    if len(paths) < size:  # too few to shard: every process embeds everything
        rank, size = 0, 1
    total, paths = len(paths), list(paths)[rank::size]
    device = pick_device()
    extractor = extractor.eval().to(device, memory_format=torch.channels_last)
    outputs: list[list[np.ndarray]] = []
    with console.progress("embed", len(paths)) as bar:
        for batch in iter_batches(paths, prep, batch_size):
            x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
            feats = extractor.stage_features(x)
            if not outputs:
                outputs = [[] for _ in feats]
            for store, f in zip(outputs, feats, strict=True):
                store.append(f.float().cpu().numpy())
            bar.update(len(batch))
    if size > 1:
        local = np.concatenate([np.concatenate(store) for store in outputs], axis=1)
        split_at = np.cumsum([store[0].shape[1] for store in outputs])[:-1]
        full = gather_rows(torch.from_numpy(local).to(device), total).cpu().numpy()
        return np.split(full, split_at, axis=1)
    return [np.concatenate(store) for store in outputs]

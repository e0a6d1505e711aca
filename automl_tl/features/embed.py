"""Batched frozen feature extraction, image decoding overlapped with compute."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.console import Console
from ..core.distributed import gather_rows, world
from ..core.machine import pick_batch_size, pick_device
from ..data.batches import iter_batches
from ..data.decode import load_image
from ..data.preprocess import Preprocessing
from .extractor import FeatureExtractor
from .runners import make_runner

__all__ = ["embed"]


def embed(
    extractor: FeatureExtractor,
    paths: Sequence[Path],
    prep: Preprocessing,
    batch_size: int | None = None,
    console: Console | None = None,
    engine: str = "auto",
    model_dir: str | Path | None = None,
    label: str = "embed",
    shard: bool = True,
) -> list[np.ndarray]:
    """Pooled features of every stage up to the extractor's cut, one (N, width) array per stage.

    Args:
        batch_size: images per forward pass; None picks it from the available memory.
        engine: "onnxruntime", "torch" or "auto" (see `runtime.make_runner`: onnxruntime on
            CPU, torch on CUDA or when forward hooks are registered on the extractor).
        model_dir: where the onnxruntime engine keeps its exports to reuse them across
            runs; None keeps them in a temporary folder for this process.
        label: the progress bar's name.

    Under torch.distributed (and `shard`) this is collective: each process embeds
    `paths[rank::world]` and every process receives all rows, in order. With `shard` False a
    process embeds everything alone (no collective call).
    """
    console = console or Console(quiet=True)
    rank, size = world() if shard else (0, 1)
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

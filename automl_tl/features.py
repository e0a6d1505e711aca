"""The embed step behind the feature cache: the pooled features of every stage of an image are
computed once per (image content, backbone weights, preprocessing, decoder), stored, and read
back by the analysis, the case-2 probes and head training, in this run and later ones."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision

from .backbone import BackboneSpec, FeatureExtractor, file_sha256
from .cache import FeatureStore, StoredRows
from .console import Console
from .data import Sample
from .decode import load_image
from .distributed import world
from .embed import iter_batches
from .memo import Memo
from .runtime import _read_sidecar, extractor_key, make_runner, pick_batch_size, pick_engine

__all__ = ["FeatureCache", "CacheStats", "DECODER"]

# Part of every feature space's identity: a decoder change may change the pixels.
DECODER = f"automl_tl.decode/1 torchvision {torchvision.__version__} pillow {PIL.__version__}"


@dataclass
class CacheStats:
    """What one run's embedding cost: rows read from the cache vs computed now."""

    hits: int = 0
    computed: int = 0
    seconds: float = 0.0
    engine: str = ""
    backend: str = ""
    location: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class FeatureCache:
    """Features of one backbone (all stages) for audited samples, through the feature store.

    Args:
        spec, net: the backbone and its built network (frozen, eval mode).
        cache_dir: the cache root (default: `automl_tl.cache.default_cache_dir()`).
        dtype: "fp16" (default) or "int8" (per-row scale), how rows are stored.
        engine: "auto", "onnxruntime" or "torch" (see automl_tl.runtime).
        batch_size: images per forward pass; None picks it from the available memory.
        chunk: rows computed between two commits to the store (what a kill can lose).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        net: torch.nn.Module,
        cache_dir: str | Path | None = None,
        dtype: str = "fp16",
        engine: str = "auto",
        batch_size: int | None = None,
        console: Console | None = None,
        chunk: int = 256,
    ):
        self.spec, self.net = spec, net.eval()
        self.console = console or Console(quiet=True)
        self.store = FeatureStore(cache_dir, console=self.console)
        self.root = Path(self.store.root)
        self.memo = Memo(self.root)
        self.engine, self.batch_size, self.chunk = engine, batch_size, chunk
        self.stage_names = [s.name for s in spec.stages]
        prep = spec.preprocessing
        self.extractor = FeatureExtractor(self.net, prep, len(spec.stages) - 1).eval()
        self.model_key = extractor_key(self.extractor, prep.crop_size)
        self.description = {
            "backbone": spec.name,
            "model": self.model_key,
            "preprocessing": prep.to_dict(),
            "decoder": DECODER,
            "stages": self.stage_names,
        }
        self.space = self.store.space_id(self.description, dtype)
        self.model_dir = self.root / "models"
        self.stats = CacheStats(location=str(self.root))
        self._runner = None
        self._counted: set[str] = set()  # digests already counted in stats

    # ------------------------------------------------------------------ compute
    def _missing(self, samples: Sequence[Sample]) -> list[Sample]:
        digests = [s.digest for s in samples]
        gaps: set[int] = set()
        for stage in self.stage_names:
            gaps.update(self.store.missing(self.space, stage, digests))
        seen, todo = set(), []
        for i in sorted(gaps):
            if samples[i].digest not in seen:
                seen.add(samples[i].digest)
                todo.append(samples[i])
        return todo

    def runner(self, n_images: int | None = None):
        """The stage runner (onnxruntime export kept in the cache's models/ folder)."""
        if self._runner is None:
            self._runner = make_runner(
                self.extractor,
                self.spec.preprocessing.crop_size,
                self.engine,
                self.model_dir,
                key=self.model_key,
                console=self.console,
                n_images=n_images,
            )
            self.stats.engine = self._runner.engine
        return self._runner

    def ensure(self, samples: Sequence[Sample]) -> None:
        """Compute and store the rows of `samples` the cache does not hold yet; committed every
        `chunk` images, so a killed run keeps what it finished. Under torch.distributed each
        process computes its share of what is missing and all wait for the others."""
        samples = list(samples)
        todo = self._missing(samples)
        fresh = {s.digest for s in samples} - self._counted
        self._counted |= fresh
        self.stats.hits += len(fresh - {s.digest for s in todo})
        rank, size = world()
        mine = todo[rank::size] if len(todo) >= size else (todo if rank == 0 else [])
        if mine:
            t0 = time.perf_counter()
            self._compute(mine)
            self.stats.seconds += time.perf_counter() - t0
            self.stats.computed += len(mine)
        if size > 1:
            torch.distributed.barrier()

    def _compute(self, todo: list[Sample]) -> None:
        prep = self.spec.preprocessing
        pending: list[list[np.ndarray]] = []
        done = 0
        # The bar opens first so that logs show it while an onnxruntime export is made.
        with self.console.progress("embed", len(todo)) as bar:
            runner = self.runner(len(todo))
            # At most 64 per batch: with 256 (what a quarter of 24 GB allows) one embedding
            # process held 6 GB; the batch also delays the first commit to the store.
            batch = pick_batch_size(prep.crop_size, self.batch_size, high=64, n_images=len(todo))
            for x in iter_batches([s.path for s in todo], prep, batch, loader=load_image):
                pending.append(runner.run(x))
                bar.update(len(x))
                rows = sum(len(p[0]) for p in pending)
                if rows >= self.chunk:
                    self._put(todo[done : done + rows], pending)
                    done, pending = done + rows, []
            if pending:
                self._put(todo[done:], pending)

    def _put(self, samples: list[Sample], pending: list[list[np.ndarray]]) -> None:
        stages = {
            name: np.concatenate([p[i] for p in pending]) for i, name in enumerate(self.stage_names)
        }
        self.store.put(self.space, [s.digest for s in samples], stages)

    # --------------------------------------------------------------------- read
    def rows(self, samples: Sequence[Sample], stage: str) -> StoredRows:
        """Stored rows of one stage for `samples` (computed first where missing), in order."""
        self.ensure(samples)
        return self.store.get(self.space, stage, [s.digest for s in samples])

    def stage_rows(self, samples: Sequence[Sample]) -> list[StoredRows]:
        """Stored rows of every stage for `samples`, in stage order."""
        self.ensure(samples)
        digests = [s.digest for s in samples]
        return [self.store.get(self.space, name, digests) for name in self.stage_names]

    def onnx_path(self) -> Path | None:
        """The verified all-stage ONNX graph (outputs "stage<i>") when the engine is
        onnxruntime, exported now if an earlier run did not leave one; else None.

        An export whose sidecar checksum matches is used without opening a session (a warm
        run embeds nothing, so it needs the file, not a runner)."""
        path = self.model_dir / f"{self.model_key}.onnx"
        if self._runner is None and pick_engine(self.engine, extractor=self.extractor) != "torch":
            record = _read_sidecar(path)
            try:
                if record and record.get("sha256") == file_sha256(path):
                    return path
            except OSError:
                pass
        runner = self.runner()
        return getattr(runner, "path", None) if runner.engine == "onnxruntime" else None

    def close(self) -> None:
        self.memo.close()
        self.store.close()

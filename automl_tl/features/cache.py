"""The embed step behind the feature cache: the pooled features of every stage of an image are
computed once per (image content, backbone weights, preprocessing, decoder), stored, and read
back by the analysis, the case-2 probes and head training, in this run and later ones."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.console import Console
from ..core.contract import BackboneSpec
from ..core.distributed import barrier, world
from ..core.errors import DiskFullError, cache_full_warning
from ..core.files import file_sha256
from ..core.machine import give_back_memory, pick_batch_size
from ..data.batches import iter_batches
from ..data.decode import decoder_id, load_image
from ..data.files import Sample
from . import ops
from .extractor import FeatureExtractor
from .memo import Memo
from .rows import StoredRows, joined_rows
from .runners import forget_runner, make_runner, pick_engine
from .stage_graph import extractor_key, read_sidecar
from .store import FeatureStore
from .views import JOINER, frozen_views

__all__ = ["FeatureCache", "CacheStats", "DECODER"]

# Part of every feature space's identity: a decoder change may change the pixels. (Named
# without importing torchvision, whose import costs seconds that a warm run has no use for.)
DECODER = decoder_id()


RATE_MIN_IMAGES = 64  # fewer embedded images time the session start more than the graph
_RATE_NAMESPACE = "embed-rate-v1"


@dataclass
class CacheStats:
    """What one run's embedding cost: rows read from the cache vs computed now."""

    hits: int = 0
    computed: int = 0
    seconds: float = 0.0
    engine: str = ""
    backend: str = ""
    location: str = ""
    not_stored: int = 0  # rows kept in memory only: the cache's disk was full

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _MemoryRows:
    """Rows computed while the cache's disk is full, kept in this process and quantised as
    the store would, so that results do not depend on where the rows were kept."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.rows: dict[tuple[str, str], tuple[np.ndarray, float | None]] = {}

    def put(self, digests: list[str], stages: dict[str, np.ndarray]) -> int:
        for stage, x in stages.items():
            t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
            if self.dtype == "int8":
                q, scales = (v.numpy() for v in ops.quantize_int8(t))
            else:
                q, scales = ops.quantize_fp16(t).numpy(), None
            for i, d in enumerate(digests):
                self.rows.setdefault((stage, d), (q[i], None if scales is None else scales[i]))
        return len(digests)


class FeatureCache:
    """Features of one backbone (all stages) for audited samples, through the feature store.

    Args:
        spec, net: the backbone and its built network (frozen, eval mode).
        cache_dir: the cache root (default: `automl_tl.features.store.default_cache_dir()`).
        dtype: "fp16" (default) or "int8" (per-row scale), how rows are stored.
        engine: "auto", "onnxruntime" or "torch" (see automl_tl.features.runners).
        batch_size: images per forward pass; None picks it from the available memory.
        chunk: rows computed between two commits to the store (what a kill can lose).
        views: what is stored per image (default: every frozen-head candidate view,
            `candidates.frozen_views`); the graph runs only up to the deepest one.
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
        views=None,
    ):
        self.spec, self.net = spec, net.eval()
        self.console = console or Console(quiet=True)
        self.store = FeatureStore(cache_dir, console=self.console)
        self.root = Path(self.store.root)
        self.memo = Memo(self.root, self.console)
        self.engine, self.batch_size, self.chunk = engine, batch_size, chunk
        self.stage_names = [s.name for s in spec.stages]
        # Every candidate input of a frozen head (stage x pooling grid), from one forward pass.
        self.views = list(views) if views is not None else frozen_views(spec)
        self.view_names = [v.name for v in self.views]
        prep = spec.preprocessing
        self.extractor = FeatureExtractor(
            self.net,
            prep,
            max(v.stage_index for v in self.views),
            views=[(v.stage_index, v.grid) for v in self.views],
        ).eval()
        self.model_key = extractor_key(self.extractor, prep.crop_size)
        self.description = {
            "backbone": spec.name,
            "model": self.model_key,
            "preprocessing": prep.to_dict(),
            "decoder": DECODER,
            "stages": self.view_names,
        }
        self._dtype = dtype
        self._memory: _MemoryRows | None = None  # set once the cache's disk is full
        self._store_ok = True  # False when not even the feature space could be registered
        try:
            self.space = self.store.space_id(self.description, dtype)
        except DiskFullError as e:
            self.space = self.store.space_id(self.description, dtype, register=False)
            self._store_ok = False
            self._cache_full(e)
        self.model_dir = self.root / "models"
        self.stats = CacheStats(location=str(self.root))
        self._runner = None
        self._counted: set[str] = set()  # digests already counted in stats

    # ------------------------------------------------------------------ compute
    def _cache_full(self, error: DiskFullError) -> None:
        """Go on without storing: rows computed from now on are kept in memory (one warning)."""
        if self._memory is None:
            self._memory = _MemoryRows(self._dtype)
            self.console.warn_once(("cache-full", str(self.root)), cache_full_warning(error))

    def missing(self, samples: Sequence[Sample]) -> list[Sample]:
        """The samples (once per content) that lack the rows of at least one view."""
        digests = [s.digest for s in samples]
        gaps: set[int] = set()
        for stage in self.view_names:
            if self._store_ok:
                miss = self.store.missing(self.space, stage, digests)
            else:
                miss = range(len(digests))
            if self._memory is not None:
                miss = [i for i in miss if (stage, digests[i]) not in self._memory.rows]
            gaps.update(miss)
        seen, todo = set(), []
        for i in sorted(gaps):
            if samples[i].digest not in seen:
                seen.add(samples[i].digest)
                todo.append(samples[i])
        return todo

    def runner(self, n_images: int | None = None):
        """The stage runner (onnxruntime export kept in the cache's models/ folder; torch
        when that folder's disk is full)."""
        if self._runner is None:
            crop = self.spec.preprocessing.crop_size
            try:
                self._runner = make_runner(
                    self.extractor,
                    crop,
                    self.engine,
                    self.model_dir,
                    key=self.model_key,
                    console=self.console,
                    n_images=n_images,
                )
            except DiskFullError as e:
                self._cache_full(e)
                self._runner = make_runner(self.extractor, crop, "torch")
            self.stats.engine = self._runner.engine
        return self._runner

    def release(self) -> None:
        """Drop the stage runner (its onnxruntime session and buffers, hundreds of MB) until
        rows must be computed again; the exported graph stays in the cache's models/ folder,
        so a later runner starts from it."""
        if self._runner is not None:
            forget_runner(self._runner)
        self._runner = None
        give_back_memory()

    def head_extractor(self, cut: int, grid: int = 1, parts=()) -> FeatureExtractor:
        """The frozen model's feature extractor: the backbone up to stage `cut`, pooled to
        `grid`, or the joined view of `parts` ((stage index, grid) pairs)."""
        return FeatureExtractor(self.net, self.spec.preprocessing, cut, grid=grid, parts=parts)

    def sibling(self, spec: BackboneSpec | None = None, views=None) -> FeatureCache:
        """A cache of the same network, folder, storage and engine for other `views` (a
        stage's whole map) or another `spec` (the backbone at another input size)."""
        return FeatureCache(
            spec or self.spec,
            self.net,
            self.root,
            self._dtype,
            self.engine,
            self.batch_size,
            self.console,
            self.chunk,
            views,
        )

    def ensure(self, samples: Sequence[Sample]) -> None:
        """Compute and store the rows of `samples` the cache does not hold yet; committed every
        `chunk` images, so a killed run keeps what it finished.

        Collective under torch.distributed: every process calls it with the same samples,
        computes its share of what is missing, and waits for the others. Reads (`rows`,
        `stage_rows`, `view_rows`) are never collective: what they miss, this process
        computes alone."""
        samples = list(samples)
        rank, size = world()
        self._compute_missing(samples, rank, size)
        if size > 1:
            barrier()
            late = self.missing(samples)  # kept in another process's memory: its disk was full
            if late:
                self._compute(late)
                self.stats.computed += len(late)

    def _compute_missing(self, samples: list[Sample], rank: int = 0, size: int = 1) -> None:
        """Compute this process's share (`rank` of `size`) of the rows `samples` miss."""
        todo = self.missing(samples)
        fresh = {s.digest for s in samples} - self._counted
        self._counted |= fresh
        self.stats.hits += len(fresh - {s.digest for s in todo})
        mine = todo[rank::size] if len(todo) >= size else (todo if rank == 0 else [])
        if mine:
            t0 = time.perf_counter()
            self._compute(mine)
            self.stats.seconds += time.perf_counter() - t0
            self.stats.computed += len(mine)
            rate = self._measured_rate()
            if rate is not None:
                self.memo.put(_RATE_NAMESPACE, self.model_key, {"images_per_second": rate})

    def embed_rate(self) -> float | None:
        """Images per second of this graph's embedding: this run's when it computed at least
        RATE_MIN_IMAGES rows, else the last such measurement in this cache folder (a warm
        run embeds nothing), else None."""
        rate = self._measured_rate()
        if rate is not None:
            return rate
        known = self.memo.get(_RATE_NAMESPACE, self.model_key)
        rate = known.get("images_per_second") if isinstance(known, dict) else None
        return float(rate) if isinstance(rate, int | float) and rate > 0 else None

    def _measured_rate(self) -> float | None:
        """This run's embedding rate, when it computed enough rows to time the graph."""
        computed, seconds = self.stats.computed, self.stats.seconds
        return computed / seconds if computed >= RATE_MIN_IMAGES and seconds > 0 else None

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
            name: np.concatenate([p[i] for p in pending]) for i, name in enumerate(self.view_names)
        }
        digests = [s.digest for s in samples]
        if self._memory is None:
            try:
                self.store.put(self.space, digests, stages)
                return
            except DiskFullError as e:  # nothing of this put was kept: it goes to memory
                self._cache_full(e)
        self.stats.not_stored += self._memory.put(digests, stages)

    def _get(self, stage: str, digests: list[str]) -> StoredRows:
        """Rows from the store, or from memory for those the full cache could not keep. A
        joined view's name ("a+b") gives its members' rows side by side (float16)."""
        members = stage.split(JOINER)
        if len(members) > 1:
            return joined_rows([self._get(m, digests) for m in members])
        if self._memory is None or (not digests and self._store_ok):
            return self.store.get(self.space, stage, digests)
        if not digests:
            kind = np.int8 if self._dtype == "int8" else np.float16
            scales = torch.zeros(0) if self._dtype == "int8" else None
            return StoredRows(torch.from_numpy(np.empty((0, 0), dtype=kind)), scales)
        mem = self._memory.rows
        inside = [i for i, d in enumerate(digests) if (stage, d) in mem]
        rest = [i for i, d in enumerate(digests) if (stage, d) not in mem]
        stored = self.store.get(self.space, stage, [digests[i] for i in rest]) if rest else None
        first = mem[(stage, digests[inside[0]])][0] if inside else stored.values[0].numpy()
        values = np.empty((len(digests), first.shape[0]), dtype=first.dtype)
        scales = np.empty(len(digests), dtype=np.float32) if self._dtype == "int8" else None
        for i in inside:
            values[i], scale = mem[(stage, digests[i])]
            if scales is not None:
                scales[i] = scale
        if stored is not None:
            values[rest] = stored.values.numpy()
            if scales is not None:
                scales[rest] = stored.scales.numpy()
        return StoredRows(
            torch.from_numpy(values), None if scales is None else torch.from_numpy(scales)
        )

    # --------------------------------------------------------------------- read
    def rows(self, samples: Sequence[Sample], stage: str) -> StoredRows:
        """Stored rows of one stage for `samples` (computed first where missing), in order."""
        self._compute_missing(list(samples))
        return self._get(stage, [s.digest for s in samples])

    def stage_rows(self, samples: Sequence[Sample]) -> list[StoredRows]:
        """Stored rows of every stage for `samples`, in stage order."""
        self._compute_missing(list(samples))
        digests = [s.digest for s in samples]
        return [self._get(name, digests) for name in self.stage_names]

    def view_rows(self, samples: Sequence[Sample]):
        """A function view name -> stored rows of `samples` (computed first where missing,
        once for all views)."""
        self._compute_missing(list(samples))
        digests = [s.digest for s in samples]
        return lambda name: self._get(name, digests)

    def onnx_path(self) -> Path | None:
        """The verified all-stage ONNX graph (outputs "stage<i>") when the engine is
        onnxruntime, exported now if an earlier run did not leave one; else None.

        An export whose sidecar checksum matches is used without opening a session (a warm
        run embeds nothing, so it needs the file, not a runner)."""
        path = self.model_dir / f"{self.model_key}.onnx"
        if self._runner is None and pick_engine(self.engine, extractor=self.extractor) != "torch":
            record = read_sidecar(path)
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

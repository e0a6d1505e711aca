"""Stage-feature runners for frozen embedding: onnxruntime on CPU, torch eager otherwise.

A runner maps a float32 NCHW batch in [0, 1] to the pooled features of every stage up to
the extractor's cut (`FeatureExtractor.stage_features`), as numpy arrays. The onnxruntime
runner exports those features once per (weights, cut, input size) into a folder, checks the
graph against torch before trusting it, and later runs load the checked file; a backbone
that does not export, or exports wrongly, falls back to torch with a one-line note.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.console import Console
from ..core.errors import AutoTLError
from ..core.files import file_sha256, write_json_atomic
from ..core.machine import available_cores
from .extractor import FeatureExtractor
from .stage_graph import (
    INPUT_NAME,
    ExportRefused,
    export_stages,
    extractor_key,
    has_forward_hooks,
    ort_session,
    read_sidecar,
)

__all__ = [
    "ENGINES",
    "MIN_IMAGES_TO_EXPORT",
    "StageRunner",
    "TorchRunner",
    "OrtRunner",
    "pick_engine",
    "make_runner",
    "forget_runner",
]

ENGINES = ("auto", "onnxruntime", "torch")
# Exporting and checking EfficientNet-Lite0 takes ~1.5-3 s, what torch eager needs for
# ~40-60 images on 2 cores; below this many images "auto" does not export.
MIN_IMAGES_TO_EXPORT = 64
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StageRunner:
    """Pooled features of every stage up to the cut, for float32 NCHW batches in [0, 1]."""

    engine: str = ""

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """One float32 (N, width) array per stage, in stage order."""
        raise NotImplementedError


class TorchRunner(StageRunner):
    """torch eager, channels_last, inference mode (the extractor is moved to `device`)."""

    engine = "torch"

    def __init__(self, extractor: FeatureExtractor, device: torch.device | str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.extractor = extractor.eval().to(self.device, memory_format=torch.channels_last)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            feats = self.extractor.stage_features(x.contiguous(memory_format=torch.channels_last))
            return [f.float().cpu().numpy() for f in feats]


class OrtRunner(StageRunner):
    """An exported stage graph in an onnxruntime session (CUDA first when available)."""

    engine = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = ort_session(path, threads)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})


def pick_engine(
    engine: str = "auto",
    device: torch.device | str | None = None,
    extractor: nn.Module | None = None,
) -> str:
    """Resolve "auto": onnxruntime on CPU, torch on CUDA, and torch when forward hooks are
    registered on `extractor` (they would not run in an exported graph); check the name."""
    if engine not in ENGINES:
        raise AutoTLError(f"unknown engine '{engine}'; use one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" or (
        extractor is not None and has_forward_hooks(extractor)
    ):
        return "torch"
    return "onnxruntime"


_RUNNERS: dict[tuple[str, int], tuple[tuple, OrtRunner]] = {}  # a few open sessions


def _verified_runner(path: Path, threads: int | None) -> OrtRunner | None:
    """A session on an earlier export when its sidecar checksum matches and it loads;
    sessions are kept while the files' (inode, size, mtime) stay the same."""
    threads = threads or available_cores()
    try:
        stats = [os.stat(p) for p in (path, path.with_suffix(".json"))]
        sig = tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)
    except OSError:
        return None
    cached = _RUNNERS.get((str(path), threads))
    if cached and cached[0] == sig:
        return cached[1]
    record = read_sidecar(path)
    try:
        if not record or file_sha256(path) != record.get("sha256"):
            return None
        runner = OrtRunner(path, threads)
    except Exception:
        return None
    if len(_RUNNERS) >= 4:
        _RUNNERS.clear()
    _RUNNERS[(str(path), threads)] = (sig, runner)
    return runner


def forget_runner(runner) -> None:
    """Stop keeping `runner`'s session open (its memory goes once nothing else holds it)."""
    for key in [k for k, (_, r) in _RUNNERS.items() if r is runner]:
        del _RUNNERS[key]


_SESSION_DIR: list[Path] = []


def _session_dir() -> Path:
    """A temporary folder for this process's exports, removed at exit."""
    if not _SESSION_DIR:
        _SESSION_DIR.append(Path(tempfile.mkdtemp(prefix="automl-tl-onnx-")))
        atexit.register(shutil.rmtree, _SESSION_DIR[0], True)
    return _SESSION_DIR[0]


def make_runner(
    extractor: FeatureExtractor,
    crop_size: int,
    engine: str = "auto",
    model_dir: str | Path | None = None,
    key: str | None = None,
    console: Console | None = None,
    threads: int | None = None,
    n_images: int | None = None,
) -> StageRunner:
    """A runner on the chosen engine ("auto": see `pick_engine`).

    Args:
        extractor: the frozen extractor; its cut decides the stages returned.
        crop_size: input height and width.
        model_dir: where exports are kept and reused (a per-process temporary folder if None).
        key: file name (no suffix) of the export; default `extractor_key(...)`.
        threads: onnxruntime intra-op threads (default: the cores available).
        n_images: how many images the runner is for; "auto" stays with torch for fewer
            than MIN_IMAGES_TO_EXPORT when no export is there to reuse.
    """
    console = console or Console(quiet=True)
    if pick_engine(engine, extractor=extractor) == "torch":
        return TorchRunner(extractor)
    if has_forward_hooks(extractor):
        console.note("forward hooks on the backbone will not run in the onnxruntime engine")
    key = key or extractor_key(extractor, crop_size)
    if not _KEY_RE.match(key):
        raise AutoTLError(f"export key '{key}' is not a plain file name; use letters, digits, ._-")
    path = Path(model_dir or _session_dir()) / f"{key}.onnx"
    runner = _verified_runner(path, threads)
    if runner is not None:
        return runner
    if engine == "auto" and n_images is not None and n_images < MIN_IMAGES_TO_EXPORT:
        return TorchRunner(extractor)
    record = read_sidecar(path)
    reason = record.get("refused") if record else None
    if reason is None:
        try:
            export_stages(extractor, path, crop_size)
            return _verified_runner(path, threads) or OrtRunner(path, threads)
        except ExportRefused as e:
            reason = str(e)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path.with_suffix(".json"), {"refused": reason})
    console.note(f"onnxruntime engine unavailable for this backbone ({reason}); using torch")
    return TorchRunner(extractor)

"""Stage-feature runners for frozen embedding: onnxruntime on CPU, torch eager otherwise.

A runner maps a float32 NCHW batch in [0, 1] to the pooled features of every stage up to
the extractor's cut (`FeatureExtractor.stage_features`), as numpy arrays. The onnxruntime
runner exports those features once per (weights, cut, input size) into a folder, checks the
graph against torch before trusting it, and later runs load the checked file; a backbone
that does not export, or exports wrongly, falls back to torch with a one-line note.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .backbone import FeatureExtractor, file_sha256
from .console import Console
from .errors import AutoTLError, DiskFullError, is_disk_full
from .export import ort_providers

__all__ = [
    "ENGINES",
    "MIN_IMAGES_TO_EXPORT",
    "StageRunner",
    "TorchRunner",
    "OrtRunner",
    "pick_engine",
    "make_runner",
    "export_stages",
    "extractor_key",
    "has_forward_hooks",
    "available_cores",
    "available_memory",
    "pick_batch_size",
]

ENGINES = ("auto", "onnxruntime", "torch")
INPUT_NAME = "image"
# Parity of a fresh export: max |ort - torch| <= _REL_TOL * max |torch| + _ABS_TOL, per stage.
_REL_TOL, _ABS_TOL = 1e-3, 1e-6
# Working memory of one image in the forward pass, in multiples of its float32 input
# (EfficientNet-Lite0 under onnxruntime: ~23 MB per 224 px image, 38x); a quarter of the
# available memory goes to the batch.
_ACTIVATION_FACTOR, _MEMORY_SHARE = 48, 0.25
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
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: the decoder threads need those
        # cycles (measured on 2 shared cores: bare forward 1.2x, embed() 1.16x faster).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=ort_providers())

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})


def available_cores() -> int:
    """CPU cores this process may use (affinity), capped by torch's thread setting."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, torch.get_num_threads()))


def has_forward_hooks(module: nn.Module) -> bool:
    """True when forward hooks are registered (on a submodule or globally): an exported
    graph would not call them."""
    from torch.nn.modules import module as mod

    if mod._global_forward_hooks or mod._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


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


_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(extractor: FeatureExtractor, crop_size: int) -> tuple | None:
    """Cheap identity of the current weights (storage + in-place version counters)."""
    try:
        state = extractor.state_dict(keep_vars=True).values()
        views = getattr(extractor, "views", ())
        return (extractor.cut, views, crop_size, *((t.data_ptr(), t._version) for t in state))
    except RuntimeError:  # inference tensors have no version counter
        return None


def extractor_key(extractor: FeatureExtractor, crop_size: int) -> str:
    """A file-name key for the exported graph: architecture, cut, input size and weights."""
    fingerprint = _fingerprint(extractor, crop_size)
    known = _KEYS.get(extractor)
    if fingerprint is not None and known and known[0] == fingerprint:
        return known[1]
    h = hashlib.sha256()
    net = extractor.net
    h.update(
        f"{type(net).__module__}.{type(net).__qualname__}|{extractor.cut}|{crop_size}".encode()
    )
    views = getattr(extractor, "views", None)  # the graph's outputs: (stage, grid) pairs
    if views is not None and tuple(views) != tuple((i, 1) for i in range(extractor.cut + 1)):
        h.update(f"|views (grid_pool 2) {list(views)}".encode())
    h.update(torch.__version__.encode())
    for name, value in extractor.state_dict().items():
        t = value.detach().to("cpu", memory_format=torch.contiguous_format)
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    key = f"stages-{h.hexdigest()[:24]}"
    if fingerprint is not None:
        _KEYS[extractor] = (fingerprint, key)
    return key


class _StageGraph(nn.Module):
    """stage_features as a tuple (what the ONNX exporter wants)."""

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.extractor.stage_features(x))


class _ExportRefused(Exception):
    """The backbone did not export or the export disagrees with torch."""


def _rel_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| relative to the feature scale (max |expected|)."""
    return float(np.abs(got - expected).max() / (np.abs(expected).max() + _ABS_TOL / _REL_TOL))


def export_stages(extractor: FeatureExtractor, path: str | Path, crop_size: int) -> dict:
    """Export the stage features to ONNX (opset 17, dynamic batch), check them against
    torch on a small batch, then publish the file atomically with a sidecar
    `<path>.json` holding its sha256. Returns the sidecar record.

    Raises _ExportRefused when the export fails or disagrees with torch.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    modes = {m: m.training for m in extractor.modules()}
    # Registered hooks (e.g. BNDriftRecorder) must not see the check batch or the trace.
    hooks = {m: (m._forward_hooks, m._forward_pre_hooks) for m in extractor.modules()}
    for m in hooks:
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    device = next((p.device for p in extractor.parameters()), torch.device("cpu"))
    extractor.to("cpu", memory_format=torch.contiguous_format).eval()
    check = np.random.default_rng(0).random((2, 3, crop_size, crop_size), dtype=np.float32)
    tmp = None
    try:
        fd, tmp = _mkstemp(path)
        os.close(fd)
        with torch.inference_mode():
            expected = [f.numpy().copy() for f in extractor.stage_features(torch.from_numpy(check))]
        names = [f"stage{i}" for i in range(len(expected))]
        axes = {n: {0: "batch"} for n in [INPUT_NAME, *names]}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _StageGraph(extractor).eval(),  # the exporter restores the wrapper's mode
                    (torch.from_numpy(check),),
                    tmp,
                    dynamo=False,
                    opset_version=17,
                    input_names=[INPUT_NAME],
                    output_names=names,
                    dynamic_axes=axes,
                )
            got = OrtRunner(tmp, threads=1).run(check)
        except Exception as e:
            if is_disk_full(e):  # not the backbone's fault: never recorded as a refusal
                raise DiskFullError(path) from None
            raise _ExportRefused(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
        if [g.shape for g in got] != [e.shape for e in expected]:
            raise _ExportRefused("onnxruntime outputs do not have the shapes of torch's")
        diff = max(_rel_diff(g, e) for g, e in zip(got, expected, strict=True))
        if not diff <= _REL_TOL:
            raise _ExportRefused(f"onnxruntime differs from torch by {diff:.1e} relative")
        record = {"sha256": file_sha256(Path(tmp)), "max_rel_diff": diff, "stages": len(names)}
        os.replace(tmp, path)
        _write_json(path.with_suffix(".json"), record)
        return record
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        extractor.to(device)
        for m, training in modes.items():
            m.training = training
            m._forward_hooks, m._forward_pre_hooks = hooks[m]


def _mkstemp(path: Path) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(path) from None
        raise


def _write_json(path: Path, record: dict) -> None:
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None


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
    record = _read_sidecar(path)
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
    record = _read_sidecar(path)
    reason = record.get("refused") if record else None
    if reason is None:
        try:
            export_stages(extractor, path, crop_size)
            return _verified_runner(path, threads) or OrtRunner(path, threads)
        except _ExportRefused as e:
            reason = str(e)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(path.with_suffix(".json"), {"refused": reason})
    console.note(f"onnxruntime engine unavailable for this backbone ({reason}); using torch")
    return TorchRunner(extractor)


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup v2 limit."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        avail = next(int(x.split()[1]) * 1024 for x in lines if x.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 2 << 30
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, avail)


def pick_batch_size(
    crop_size: int,
    requested: int | None = None,
    low: int = 8,
    high: int = 256,
    memory: int | None = None,
    n_images: int | None = None,
) -> int:
    """Embedding batch size: `requested` when given; else what a quarter of the available
    memory holds (per image ~48x its float32 input), at most an eighth of `n_images` (the
    first batch's decoding cannot overlap compute), bounded to [low, high]."""
    if requested is not None:
        if requested < 1:
            raise AutoTLError(f"batch size {requested} is not positive; pass 1 or more")
        return int(requested)
    memory = available_memory() if memory is None else memory
    per_image = 3 * crop_size * crop_size * 4 * _ACTIVATION_FACTOR
    fits = int(memory * _MEMORY_SHARE // per_image)
    if n_images is not None:
        fits = min(fits, -(-n_images // 8))
    return max(low, min(high, fits))

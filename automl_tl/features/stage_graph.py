"""The frozen backbone as an ONNX graph: every stage's pooled features as outputs, exported once
per (weights, views, input size), checked against torch before it is trusted, and kept with a
sidecar holding its sha256 (or why the backbone refused to export)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import DiskFullError, is_disk_full
from ..core.files import file_sha256, publish, temporary_beside, write_json_atomic
from ..core.machine import available_cores, ort_providers
from .extractor import FeatureExtractor

__all__ = [
    "INPUT_NAME",
    "ExportRefused",
    "export_stages",
    "extractor_key",
    "has_forward_hooks",
    "ort_session",
    "read_sidecar",
]

INPUT_NAME = "image"
# Parity of a fresh export: max |ort - torch| <= _REL_TOL * max |torch| + _ABS_TOL, per stage.
_REL_TOL, _ABS_TOL = 1e-3, 1e-6


def has_forward_hooks(module: nn.Module) -> bool:
    """True when forward hooks are registered (on a submodule or globally): an exported
    graph would not call them."""
    from torch.nn.modules import module as mod

    if mod._global_forward_hooks or mod._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


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


class ExportRefused(Exception):
    """The backbone did not export or the export disagrees with torch."""


def _rel_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| relative to the feature scale (max |expected|)."""
    return float(np.abs(got - expected).max() / (np.abs(expected).max() + _ABS_TOL / _REL_TOL))


def export_stages(extractor: FeatureExtractor, path: str | Path, crop_size: int) -> dict:
    """Export the stage features to ONNX (opset 17, dynamic batch), check them against
    torch on a small batch, then publish the file atomically with a sidecar
    `<path>.json` holding its sha256. Returns the sidecar record.

    Raises ExportRefused when the export fails or disagrees with torch.
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
    stack = contextlib.ExitStack()
    try:
        tmp = stack.enter_context(temporary_beside(path))
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
            got = ort_session(tmp, threads=1).run(None, {INPUT_NAME: check})
        except Exception as e:
            if is_disk_full(e):  # not the backbone's fault: never recorded as a refusal
                raise DiskFullError(path) from None
            raise ExportRefused(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
        if [g.shape for g in got] != [e.shape for e in expected]:
            raise ExportRefused("onnxruntime outputs do not have the shapes of torch's")
        diff = max(_rel_diff(g, e) for g, e in zip(got, expected, strict=True))
        if not diff <= _REL_TOL:
            raise ExportRefused(f"onnxruntime differs from torch by {diff:.1e} relative")
        record = {"sha256": file_sha256(Path(tmp)), "max_rel_diff": diff, "stages": len(names)}
        publish(tmp, path)
        write_json_atomic(path.with_suffix(".json"), record)
        return record
    finally:
        stack.close()
        extractor.to(device)
        for m, training in modes.items():
            m.training = training
            m._forward_hooks, m._forward_pre_hooks = hooks[m]


def read_sidecar(path: Path) -> dict | None:
    """The sidecar record of an export (`<path>.json`), or None when missing or unreadable."""
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None


def ort_session(path: str | Path, threads: int | None = None):
    """An onnxruntime session on an exported graph, set up for embedding: all graph
    optimisations, `threads` intra-op threads (default: the cores available) that sleep
    instead of spinning when idle (the decoder threads need those cycles: measured on 2
    shared cores, bare forward 1.2x and embed() 1.16x faster), CUDA first when available."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=ort_providers())

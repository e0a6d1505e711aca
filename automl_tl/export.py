"""ONNX export of backbone cut + head (normalisation inside) and the torch/onnxruntime check."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .errors import CACHE_FULL_FIX, DiskFullError, ExportError, OutputError, cache_full_warning
from .report import write_atomic

if TYPE_CHECKING:
    import onnx

    from .console import Console

__all__ = [
    "ExportModel",
    "export_onnx",
    "compose_onnx",
    "composed_key",
    "reuse_composed",
    "remember_composed",
    "forget_composed",
    "check_parity",
    "ort_providers",
    "META_PREFIX",
]

META_PREFIX = "automl_tl."
INPUT_NAME, OUTPUT_NAME = "image", "logits"
COMPOSED_PREFIX, COMPOSED_KEEP = "composed-", 8  # the composed-model memo: newest 8 kept


class ExportModel(nn.Module):
    """Float32 NCHW RGB in [0, 1] -> class logits."""

    def __init__(self, extractor: nn.Module, head: nn.Module):
        super().__init__()
        self.extractor, self.head = extractor, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(x))


def ort_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def export_onnx(model: ExportModel, path: Path, crop_size: int, metadata: dict) -> Path:
    """Write one ONNX graph with a dynamic batch axis and JSON metadata; atomic on success."""
    import onnx  # imported on use: its import (ml_dtypes) costs ~1 s of CPU

    path = Path(path)
    model = copy_to_cpu_eval(model)
    dummy = torch.rand(2, 3, crop_size, crop_size)
    buf = io.BytesIO()  # traced in memory: only the finished file touches the disk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return _save_with_metadata(onnx.load_from_string(buf.getvalue()), path, metadata)


def _head_graph(head: nn.Module, width: int) -> onnx.ModelProto:
    """The head alone as ONNX: (batch, width) features -> (batch, classes) logits."""
    import onnx  # imported on use: its import (ml_dtypes) costs ~1 s of CPU

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy_to_cpu_eval(head),
            (torch.rand(2, width),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["features"],
            output_names=[OUTPUT_NAME],
            dynamic_axes={"features": {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return onnx.load_from_string(buf.getvalue())


def compose_onnx(
    backbone_onnx: Path, stage_output: str, head: nn.Module, width: int, path: Path, metadata: dict
) -> Path:
    """Like export_onnx, without re-tracing the backbone: the graph already exported for
    embedding (input "image", pooled stage features as outputs) is cut at `stage_output`
    and joined to the head, which alone is traced. Atomic on success."""
    import onnx  # imported on use: its import (ml_dtypes) costs ~1 s of CPU

    path = Path(path)
    backbone = onnx.load(str(backbone_onnx))
    if backbone.graph.input[0].name != INPUT_NAME:
        raise ExportError(f"'{backbone_onnx}' has input {backbone.graph.input[0].name!r}")
    cut = onnx.utils.Extractor(backbone).extract_model([INPUT_NAME], [stage_output])
    tail = onnx.compose.add_prefix(
        _head_graph(head, width), "automl_tl_head/", rename_outputs=False
    )
    proto = onnx.compose.merge_models(cut, tail, io_map=[(stage_output, "automl_tl_head/features")])
    return _save_with_metadata(proto, path, metadata)


def _save_with_metadata(proto: onnx.ModelProto, path: Path, metadata: dict) -> Path:
    """Add metadata, check, and publish `proto` at `path` atomically."""
    return _publish_model(path, _with_metadata(proto, metadata))


def _with_metadata(proto: onnx.ModelProto, metadata: dict) -> bytes:
    """`proto` with `metadata` as its metadata_props, checked and serialised."""
    import onnx  # imported on use: its import (ml_dtypes) costs ~1 s of CPU

    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = META_PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _publish_model(path: Path, data: bytes) -> Path:
    fix = "free some space there or write the model to another filesystem"
    return write_atomic(path, data, fix=fix)


def composed_key(backbone_sha256: str, stage_output: str, head: nn.Module, metadata: dict) -> str:
    """What a composed model is made of, as a sha256: the embedding graph (by checksum), the
    tensor it is cut at, the head (class, structure, every state-dict tensor's bytes), the
    metadata, and the versions of the code that compose it. Equal keys give equal files."""
    from importlib.metadata import version

    from . import __version__

    h = hashlib.sha256()
    for part in (
        "composed-v1",
        __version__,
        torch.__version__,
        version("onnx"),
        backbone_sha256,
        stage_output,
        f"{type(head).__module__}.{type(head).__qualname__}",
        repr(head),
        json.dumps(metadata, sort_keys=True),
    ):
        h.update(part.encode() + b"\0")
    for name, tensor in sorted(head.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode() + b"\0")
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _read_verified(path: Path) -> bytes | None:
    """The bytes of a memoised model whose sidecar sha256 matches them, else None. The bytes
    are read once and hashed as read, so what is checked is what gets published."""
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    return data


def _remember(folder: Path, key: str, data: bytes, console: Console | None) -> None:
    """Keep `data` as the composed model of `key` (file, then its sha256 sidecar, each
    atomic) and drop all but the newest COMPOSED_KEEP. Never fails the fit: a full disk
    warns once (like the feature cache), other write errors only skip the memo."""
    path = folder / f"{COMPOSED_PREFIX}{key}.onnx"
    record = json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "key": key}).encode()
    try:
        write_atomic(path, data, fix=CACHE_FULL_FIX)
        write_atomic(path.with_suffix(".json"), record, fix=CACHE_FULL_FIX)
    except DiskFullError as e:
        if console is not None:
            console.warn_once(("cache-full", str(folder.parent)), cache_full_warning(e))
        return
    except OutputError:
        return
    _prune(folder)


def _prune(folder: Path, keep: int = COMPOSED_KEEP) -> None:
    """Delete all but the `keep` most recently used composed models. A process copying one
    that is deleted here has it open already (POSIX keeps its bytes) or finds it missing
    and composes again."""
    found = []
    for p in folder.glob(f"{COMPOSED_PREFIX}*.onnx"):
        with contextlib.suppress(OSError):
            found.append((p.stat().st_mtime_ns, p))
    for _, p in sorted(found, reverse=True)[keep:]:
        for victim in (p, p.with_suffix(".json")):
            with contextlib.suppress(OSError):
                victim.unlink()
    # a sidecar whose model another process pruned meanwhile (models are written first)
    for sidecar in folder.glob(f"{COMPOSED_PREFIX}*.json"):
        if not sidecar.with_suffix(".onnx").exists():
            with contextlib.suppress(OSError):
                sidecar.unlink()


def reuse_composed(backbone_onnx: Path, key: str, path: Path) -> bool:
    """Publish at `path` the remembered composition of `key` (kept beside the embedding graph
    `backbone_onnx` as composed-<key>.onnx + .json holding its sha256) when its checksum
    matches; False (nothing written) when it is missing, damaged or planted. Needs no onnx
    import, which is most of what composing costs on a warm run."""
    memo = Path(backbone_onnx).parent / f"{COMPOSED_PREFIX}{key}.onnx"
    data = _read_verified(memo)
    if data is None:
        return False
    _publish_model(Path(path), data)
    with contextlib.suppress(OSError):  # most recently used: kept longest by _prune
        os.utime(memo)
    return True


def forget_composed(backbone_onnx: Path, key: str) -> None:
    """Drop the remembered composition of `key` (it failed the check of its fit)."""
    memo = Path(backbone_onnx).parent / f"{COMPOSED_PREFIX}{key}.onnx"
    for victim in (memo, memo.with_suffix(".json")):
        with contextlib.suppress(OSError):
            victim.unlink()


def remember_composed(backbone_onnx: Path, key: str, path: Path, console: Console | None) -> None:
    """Remember the model at `path` (composed and checked) as the composition of `key`."""
    _remember(Path(backbone_onnx).parent, key, Path(path).read_bytes(), console)


def _check_features(got: np.ndarray, stored: np.ndarray, onnx_path: Path) -> None:
    """The graph's stage features against the cached ones of the same images."""
    if got.shape != stored.shape:
        raise ExportError(
            f"exported model '{onnx_path}' computes features of shape {got.shape[1:]} where "
            f"the head was trained on {stored.shape[1:]}"
        )
    scale = np.abs(stored).max(axis=1, keepdims=True)
    worst = float((np.abs(got - stored) / np.maximum(scale, 1e-6)).max()) if len(got) else 0.0
    if worst > 0.02:
        raise ExportError(
            f"exported model '{onnx_path}' disagrees with torch: its backbone features differ "
            f"from the cached ones by {worst:.1%} of a row's largest value (limit 2%)"
        )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _with_float_output(model: bytes, name: str) -> bytes:
    """The serialised ModelProto `model` with one more graph output: float tensor `name`.

    Written in protobuf's wire format, not with the onnx package (whose import costs about a
    second): a parser merges a repeated singular message field into the first, so appending
    ModelProto.graph (7) holding one GraphProto.output (12) appends that output. The
    ValueInfoProto is name (1) and type (2) = TypeProto.tensor_type (1) with elem_type (1)
    FLOAT (1), what onnx.helper.make_tensor_value_info(name, FLOAT, None) makes."""
    tensor_type = _varint(1 << 3 | 0) + _varint(1)
    value_info = _field(1, name.encode()) + _field(2, _field(1, tensor_type))
    return model + _field(7, _field(12, value_info))


def _session_with_output(onnx_path: Path, name: str):
    """A session on the graph at `onnx_path` that also returns its tensor `name`."""
    model = _with_float_output(Path(onnx_path).read_bytes(), name)
    try:
        return ort.InferenceSession(model, providers=ort_providers())
    except Exception as e:
        if f"output ({name}) does not exist" in str(e):
            raise ExportError(
                f"'{onnx_path}' has no tensor {name!r} to check the backbone cut at"
            ) from None
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ExportError(f"onnxruntime cannot load '{onnx_path}': {first}") from None


def copy_to_cpu_eval(model: nn.Module) -> nn.Module:
    return model.to("cpu", memory_format=torch.contiguous_format).eval()


def check_parity(
    model: ExportModel,
    onnx_path: Path,
    batch: np.ndarray,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    stage_output: str | None = None,
    full_images: int = 2,
    reference: np.ndarray | None = None,
):
    """Run the same real images through torch and onnxruntime; raise ExportError on mismatch.

    Passes when max |logit difference| <= atol + rtol * max |logit| (1e-4 for the usual
    logits below 10; heads with logits in the hundreds get float32's relative precision)
    and every top-1 agrees. Returns n_images, max_abs_diff, tolerance, top1_agreement and
    the providers used.

    `stage_output` names the backbone features inside a graph made by `compose_onnx`. Its
    backbone part is the embedding graph, checked against torch when it was exported and by
    checksum at every reuse; what is new is the head and the join. So the graph's own stage
    features of every image go through the torch head (same tolerance), and the cut is
    checked end to end either against `reference`, the features of the same images as the
    feature cache stores them (float16/int8: within 2% of each row's largest value), or,
    without it, by the whole torch model on the first `full_images` images. The torch
    backbone's first forward pass costs about a second, which a warm fit need not pay.
    """
    model = copy_to_cpu_eval(model)
    full = len(batch)
    if stage_output is None:
        session = ort.InferenceSession(str(onnx_path), providers=ort_providers())
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch)).numpy()
    else:
        session = _session_with_output(onnx_path, stage_output)
        got, feats = session.run([OUTPUT_NAME, stage_output], {INPUT_NAME: batch})
        if reference is not None:
            _check_features(feats, np.asarray(reference, dtype=np.float32), onnx_path)
        full = 0 if reference is not None else min(full_images, len(batch))
        with torch.inference_mode():
            expected = model.head(torch.from_numpy(feats)).numpy()
            if full:  # rows: full torch path first, then the head path of every image
                whole = model(torch.from_numpy(batch[:full])).numpy()
                expected, got = np.concatenate([whole, expected]), np.concatenate([got[:full], got])
    diff = float(np.abs(got - expected).max())
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    tol = atol + rtol * float(np.abs(expected).max())
    result = {
        "n_images": int(len(batch)),
        "torch_full_images": int(full),
        "max_abs_diff": diff,
        "tolerance": tol,
        "top1_agreement": agree,
        "providers": session.get_providers(),
        "passed": diff <= tol and agree == 1.0,
    }
    if not result["passed"]:
        raise ExportError(
            f"exported model '{onnx_path}' disagrees with torch on {len(batch)} images "
            f"(max |logit diff| {diff:.2e} > {tol:.1e} or top-1 agreement {agree:.3f} < 1)"
        )
    return result

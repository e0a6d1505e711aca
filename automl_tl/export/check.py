"""The export check: the same real held-out images through torch and onnxruntime, before a
run calls itself done. A composed model (embedding graph + head) is checked at its cut
too, against the features the cache stores for those images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..core.errors import ExportError
from ..core.machine import ort_providers
from ..train.model import ExportModel
from .onnx import INPUT_NAME, OUTPUT_NAME, copy_to_cpu_eval

__all__ = ["check_parity"]


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


def _check_scores(got: np.ndarray, expected: np.ndarray, onnx_path: Path) -> None:
    """The graph's OOD scores (cosine similarities) against torch's on the same inputs."""
    worst = float(np.abs(got - expected).max()) if len(got) else 0.0
    if worst > 1e-4:
        raise ExportError(
            f"exported model '{onnx_path}' disagrees with torch: its OOD scores differ by "
            f"{worst:.2e} (limit 1e-4)"
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
    scored = model.outputs is not None
    names = [OUTPUT_NAME] + (["ood_score"] if scored else [])
    if stage_output is None:
        session = ort.InferenceSession(str(onnx_path), providers=ort_providers())
        got, *score = session.run(names, {INPUT_NAME: batch})
        with torch.inference_mode():
            feats = model.extractor(torch.from_numpy(batch))
            expected = model.logits_of(feats).numpy()
    else:
        session = _session_with_output(onnx_path, stage_output)
        got, *score, feats = session.run(names + [stage_output], {INPUT_NAME: batch})
        if reference is not None:
            _check_features(feats, np.asarray(reference, dtype=np.float32), onnx_path)
        full = 0 if reference is not None else min(full_images, len(batch))
        feats = torch.from_numpy(feats)
        with torch.inference_mode():
            expected = model.logits_of(feats).numpy()
            if full:  # rows: full torch path first, then the head path of every image
                whole = model(torch.from_numpy(batch[:full])).numpy()
                expected, got = np.concatenate([whole, expected]), np.concatenate([got[:full], got])
    if scored:  # the OOD score from the same head inputs, in torch
        with torch.inference_mode():
            want = model.outputs.score(feats).numpy()
        _check_scores(score[0], want, onnx_path)
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

"""ONNX export of backbone cut + head (normalisation inside) and the torch/onnxruntime check."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .errors import ExportError
from .report import write_atomic

if TYPE_CHECKING:
    import onnx

__all__ = [
    "ExportModel",
    "export_onnx",
    "compose_onnx",
    "check_parity",
    "ort_providers",
    "META_PREFIX",
]

META_PREFIX = "automl_tl."
INPUT_NAME, OUTPUT_NAME = "image", "logits"


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
    import onnx  # imported on use: its import (ml_dtypes) costs ~1 s of CPU

    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = META_PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    fix = "free some space there or write the model to another filesystem"
    return write_atomic(path, proto.SerializeToString(), fix=fix)


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


def _session_with_output(onnx_path: Path, name: str):
    """A session on the graph at `onnx_path` that also returns its tensor `name`."""
    import onnx  # imported on use: its import (ml_dtypes) costs ~1 s of CPU

    proto = onnx.load(str(onnx_path))
    if name not in {out for node in proto.graph.node for out in node.output}:
        raise ExportError(f"'{onnx_path}' has no tensor {name!r} to check the backbone cut at")
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    return ort.InferenceSession(proto.SerializeToString(), providers=ort_providers())


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

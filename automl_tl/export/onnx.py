"""ONNX export of the model (backbone cut + head, normalisation inside, dynamic batch, metadata),
by tracing it whole or by joining the traced head to the embedding graph already exported."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.errors import (
    ExportError,
)
from ..core.files import write_atomic
from ..train.model import ExportModel

if TYPE_CHECKING:
    import onnx


__all__ = [
    "export_onnx",
    "compose_onnx",
    "META_PREFIX",
]

META_PREFIX = "automl_tl."
INPUT_NAME, OUTPUT_NAME = "image", "logits"


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
    return publish_model(path, _with_metadata(proto, metadata))


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


def publish_model(path: Path, data: bytes) -> Path:
    """Write a serialised model at `path` atomically (a full disk says what to do)."""
    fix = "free some space there or write the model to another filesystem"
    return write_atomic(path, data, fix=fix)


def copy_to_cpu_eval(model: nn.Module) -> nn.Module:
    return model.to("cpu", memory_format=torch.contiguous_format).eval()

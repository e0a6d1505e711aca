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
from ..train.model import Everything, ExportModel, Tail
from ..train.outputs import OUTPUT_NAMES

if TYPE_CHECKING:
    import onnx


__all__ = [
    "export_onnx",
    "compose_onnx",
    "output_names",
    "META_PREFIX",
]

META_PREFIX = "automl_tl."
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def output_names(model: ExportModel) -> list[str]:
    """The graph's outputs: logits, then probabilities and the OOD score and p-value when
    the model carries them."""
    return list(OUTPUT_NAMES) if model.outputs is not None else [OUTPUT_NAME]


def _trace(module: nn.Module, example: torch.Tensor, input_name: str, outputs: list[str]):
    """`module` traced to ONNX in memory (only the finished file touches the disk)."""
    import onnx  # imported on use: its import (ml_dtypes) costs ~1 s of CPU

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy_to_cpu_eval(module),
            (example,),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={input_name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
        )
    return onnx.load_from_string(buf.getvalue())


def export_onnx(model: ExportModel, path: Path, crop_size: int, metadata: dict) -> Path:
    """Write one ONNX graph with a dynamic batch axis and JSON metadata; atomic on success."""
    dummy = torch.rand(2, 3, crop_size, crop_size)
    proto = _trace(Everything(model), dummy, INPUT_NAME, output_names(model))
    return _save_with_metadata(proto, Path(path), metadata)


def compose_onnx(
    backbone_onnx: Path,
    stage_output: str,
    model: ExportModel,
    width: int,
    path: Path,
    metadata: dict,
) -> Path:
    """Like export_onnx, without re-tracing the backbone: the graph already exported for
    embedding (input "image", pooled stage features as outputs) is cut at `stage_output`
    and joined to the model's tail (head and outputs), which alone is traced. Atomic on
    success."""
    import onnx  # imported on use: its import (ml_dtypes) costs ~1 s of CPU

    path = Path(path)
    backbone = onnx.load(str(backbone_onnx))
    if backbone.graph.input[0].name != INPUT_NAME:
        raise ExportError(f"'{backbone_onnx}' has input {backbone.graph.input[0].name!r}")
    cut = onnx.utils.Extractor(backbone).extract_model([INPUT_NAME], [stage_output])
    traced = _trace(Tail(model), torch.rand(2, width), "features", output_names(model))
    tail = onnx.compose.add_prefix(traced, "automl_tl_head/", rename_outputs=False)
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

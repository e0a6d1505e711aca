"""An int8 copy of the exported model, kept only where it pays: static post-training
quantisation with onnxruntime (QDQ format, int8 weights per output channel, uint8 activations
calibrated by min/max on training images), then fp32 and int8 run side by side on the same
validation batches. `model.int8.onnx` is written only when it is at least `min_speedup` times
as fast and loses at most `max_drop` of validation accuracy; otherwise the returned record says
what was measured and why nothing was written.

What is quantised: the convolutions and matrix products on feature maps (or token sequences),
with the residual additions and the ReLU/ReLU6 clips between them, so the int8 path runs
without a float round trip between layers (quantising Conv/Gemm alone measured 0.9x on
EfficientNet-Lite0 here: every Add and Clip cost a dequantise-quantise pair). Everything on
per-image vectors stays float: the pooled features, the head and the tail that computes the
calibrated logits, the probabilities and the OOD score (nodes named ".../outputs/..."), so
probabilities and OOD p-values are not rounded to 256 levels.

onnxruntime and numpy only (onnx imported on use): neither importing this module nor running
it imports torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core.files import file_sha256, write_atomic
from .int8_measure import flags_after, measure, verdict

__all__ = ["int8_variant", "cpu_int8_flags", "MIN_SPEEDUP", "MAX_DROP", "QUANTISED_OPS"]

MIN_SPEEDUP, MAX_DROP = 1.2, 0.01  # the keep rule: this much faster, at most this much worse
QUANTISED_OPS = ("Conv", "MatMul", "Gemm", "Add", "Clip", "Relu", "MaxPool")
TAIL_MARK = "outputs/"  # node names of the torch submodule `outputs` (logits -> OOD tail)
RECORD_KEY = "automl_tl.quantization"  # the metadata key (export.onnx's prefix + name)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# Images per calibration run. MinMax ranges are the min and max over every image whatever the
# batch, so this only sets memory: the calibration session of Lite1's model at 240 px peaked
# at 2.8 GB resident with 16 images per run, 0.9 GB with 4.
CALIBRATION_BATCH = 4


def cpu_int8_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The int8 dot-product instruction sets this CPU reports (VNNI, AMX), from /proc/cpuinfo;
    onnxruntime itself does not say which kernels it dispatches to. Empty when unknown."""
    try:
        with open(cpuinfo) as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in VNNI_FLAGS if f in flags]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _session(model):
    """An onnxruntime CPU session with default threads and optimisations (int8 is a CPU
    matter: the measurement is of the CPU kernels)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about the machine's topology
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _single_opset(proto) -> None:
    """Merge duplicate opset imports (onnx.compose.merge_models leaves one per joined graph;
    onnxruntime's quantiser refuses a model with two default-domain entries)."""
    versions: dict[str, int] = {}
    for entry in proto.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    del proto.opset_import[:]
    for domain, version in versions.items():
        proto.opset_import.add(domain=domain, version=version)


def _float_nodes(proto) -> list[str]:
    """Names of the nodes of a quantisable type that stay float: the `outputs` tail, and every
    node whose output is a per-image vector (rank 2 or less: pooled features, head) or feeds a
    graph output. Ranks come from the shape inference in `_prepare`."""
    rank = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in [*proto.graph.value_info, *proto.graph.output]
        if vi.type.tensor_type.HasField("shape")
    }
    graph_outputs = {o.name for o in proto.graph.output}
    kept = []
    for node in proto.graph.node:
        if node.op_type not in QUANTISED_OPS:
            continue
        vector = any(rank.get(o, 4) <= 2 for o in node.output)
        if TAIL_MARK in node.name or vector or graph_outputs.intersection(node.output):
            kept.append(node.name)
    return kept


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an array of images."""

    def __init__(self, input_name: str, images: np.ndarray, size: int):
        images = np.ascontiguousarray(images, dtype=np.float32)
        self._feeds = iter(
            [{input_name: images[i : i + size]} for i in range(0, len(images), size)]
        )

    def get_next(self):
        return next(self._feeds, None)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantiser reports through the root logger; keep its advice off the
    user's console while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _prepare(proto, workdir: Path) -> Path:
    """The graph as onnxruntime's quantiser wants it, saved in `workdir`: onnxruntime's basic
    (portable, standard-op) optimisations, which fold the exported padding arithmetic into
    constants (left in, the dynamic Pad computations sat between the quantised convolutions:
    0.9x), then ONNX shape inference for the ranks `_float_nodes` reads. What
    onnxruntime.quantization.quant_pre_process does, without its symbolic shape inference,
    which imports torch and sympy."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(workdir / "optimised.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    prepared = onnx.shape_inference.infer_shapes(onnx.load(options.optimized_model_filepath))
    onnx.save(prepared, str(workdir / "prepared.onnx"))
    return workdir / "prepared.onnx"


def _quantise(model_path: Path, calibration: np.ndarray, workdir: Path):
    """(int8 ModelProto without metadata, the fp32 metadata, the number of nodes quantised
    and kept float)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source = onnx.load(str(model_path))
    metadata = [(p.key, p.value) for p in source.metadata_props]
    input_name = source.graph.input[0].name
    _single_opset(source)
    quantised = workdir / "int8.onnx"
    with _quiet_root_logger():
        prepared = _prepare(source, workdir)
        proto = onnx.load(str(prepared))
        float_nodes = _float_nodes(proto)
        quantize_static(
            str(prepared),
            str(quantised),
            _Batches(input_name, calibration, CALIBRATION_BATCH),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,  # u8 x s8: the VNNI / AMX dot-product form
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTISED_OPS),
            nodes_to_exclude=float_nodes,
            calibrate_method=CalibrationMethod.MinMax,
        )
    n_ops = sum(n.op_type in QUANTISED_OPS for n in proto.graph.node)
    return onnx.load(str(quantised)), metadata, n_ops - len(float_nodes), len(float_nodes)


def _with_metadata(proto, metadata: list[tuple[str, str]], record: dict) -> bytes:
    """`proto` carrying the fp32 model's metadata and the quantisation record, serialised."""
    import onnx

    del proto.metadata_props[:]
    for key, value in [*metadata, (RECORD_KEY, json.dumps(record, sort_keys=True))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _recalibrated(proto, scores: np.ndarray):
    """`proto` with the held-out scores its OOD p-value counts against (the first input of
    the tail's LessOrEqual node) replaced by `scores`: the int8 model's own scores of the
    validation images, so its p-values are conformal for int8 features too."""
    from onnx import numpy_helper

    node = next(n for n in proto.graph.node if n.op_type == "LessOrEqual" and TAIL_MARK in n.name)
    init = next(i for i in proto.graph.initializer if i.name == node.input[0])
    held = np.sort(np.asarray(scores, dtype=np.float32)).reshape(1, -1)
    init.CopyFrom(numpy_helper.from_array(held, init.name))
    return proto


def int8_variant(
    model_path: Path,
    calibration: np.ndarray,
    val_batch: np.ndarray,
    val_labels: np.ndarray,
    out_path: Path,
    console=None,
    repeats: int = 5,
    batch_size: int = 32,
    min_speedup: float = MIN_SPEEDUP,
    max_drop: float = MAX_DROP,
    ood_threshold: float | None = None,
) -> dict:
    """Quantise the checked fp32 model at `model_path` and keep the int8 copy at `out_path`
    only when it pays (see the module docstring); returns the JSON-able record of what was
    measured. Never raises for a model onnxruntime cannot quantise or run: that is a record
    with kept False and the reason.

    Args:
        calibration: float32 NCHW images in [0, 1] from the training split (a few dozen).
        val_batch, val_labels: validation images and their class indices (accuracy of both
            models, and the batches timed).
        repeats: least number of timings of each model (median taken).
        batch_size: images per timed run, the same for both models.
        min_speedup, max_drop: the keep rule (defaults 1.2x and 0.01).
        ood_threshold: the OOD flag's threshold, to report how the int8 model's flags on the
            validation images compare with fp32's.
    """
    start = time.perf_counter()
    flags = cpu_int8_flags()
    out_path = Path(out_path)
    record: dict = {
        "kept": False,
        "reason": "",
        "fp32_images_per_second": None,
        "int8_images_per_second": None,
        "speedup": None,
        "fp32_accuracy": None,
        "int8_accuracy": None,
        "n_val": int(len(val_labels)),
        "n_calibration": int(len(calibration)),
        "batch_size": int(min(batch_size, len(val_batch))),
        "vnni": any("vnni" in f for f in flags),
        "cpu_int8_flags": flags,
        "seconds": None,
        "path": None,
    }
    if console:
        console.note(
            f"int8: quantising {Path(model_path).name} (calibrated on {len(calibration)} "
            f"training images), then timing it against fp32 on {len(val_batch)} validation images"
        )
    stage = "quantisation"
    try:
        if len(calibration) == 0 or len(val_batch) == 0 or len(val_batch) != len(val_labels):
            raise ValueError(
                f"{len(calibration)} calibration images, {len(val_batch)} validation images "
                f"and {len(val_labels)} labels"
            )
        with tempfile.TemporaryDirectory(prefix="automl-tl-int8.") as tmp:
            proto, metadata, n_int8, n_float = _quantise(Path(model_path), calibration, Path(tmp))
        record.update(quantised_ops=n_int8, float_ops=n_float)
        record["quantise_seconds"] = round(time.perf_counter() - start, 2)
        stage = "the side-by-side run"
        plain = proto.SerializeToString()
        measured = measure(
            _session(str(model_path)),
            _session(plain),
            np.ascontiguousarray(val_batch, dtype=np.float32),
            np.asarray(val_labels),
            batch_size,
            repeats,
            console,
            ood_threshold,
        )
        measured["n_val"] = record["n_val"]
        scores = measured.pop("_int8_ood_scores", None)
        if scores is not None:
            # int8 features score slightly differently: the int8 model counts its p-values
            # against its own scores of the validation images (fp32 ones would flag more)
            proto = _recalibrated(proto, scores)
            if "_fp32_ood_flags" in measured:
                flags_after(measured, scores, ood_threshold)
            record["ood_held_out"] = f"{len(scores)} validation images scored by the int8 model"
        kept, reason = verdict(measured, min_speedup, max_drop)
        speedup = measured["int8_images_per_second"] / measured["fp32_images_per_second"]
        record.update(measured, speedup=speedup, kept=kept, reason=reason)
        if kept:
            stage = "writing the int8 model"
            embedded = {
                "source_sha256": file_sha256(model_path),
                "format": "QDQ, int8 weights per output channel, uint8 activations (min/max)",
                "calibration_images": record["n_calibration"],
                "quantised_ops": n_int8,
                "float_ops": n_float,
                **{k: record[k] for k in ("fp32_accuracy", "int8_accuracy", "n_val")},
            }  # no timings: equal models stay equal files
            write_atomic(out_path, _with_metadata(proto, metadata, embedded))
            record["path"] = str(out_path)
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime refuses must not fail a fit
        record.update(
            kept=False, path=None, reason=f"int8 not kept: {stage} failed ({_one_line(e)})"
        )
    if not record["kept"]:  # an int8 file of an earlier model must not pass for this one's
        with contextlib.suppress(OSError):
            out_path.unlink()
    record["seconds"] = round(time.perf_counter() - start, 2)
    if console:
        console.note(f"{record['reason']} [{record['seconds']:.1f}s]")
    return record

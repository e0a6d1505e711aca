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
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core.files import file_sha256, write_atomic

__all__ = ["int8_variant", "cpu_int8_flags", "MIN_SPEEDUP", "MAX_DROP", "QUANTISED_OPS"]

MIN_SPEEDUP, MAX_DROP = 1.2, 0.01  # the keep rule: this much faster, at most this much worse
QUANTISED_OPS = ("Conv", "MatMul", "Gemm", "Add", "Clip", "Relu", "MaxPool")
TAIL_MARK = "outputs/"  # node names of the torch submodule `outputs` (logits -> OOD tail)
RECORD_KEY = "automl_tl.quantization"  # the metadata key (export.onnx's prefix + name)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CALIBRATION_BATCH = 16


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


def _measure(
    fp32, int8, images, labels, batch_size: int, repeats: int, console=None, threshold=None
) -> dict:
    """Accuracy of both models on `images`, and their speed: every full batch of the pass is
    timed for both models back to back (which goes first alternates), topped up with
    repeats of the first batch until each model has `repeats` timings; after one untimed
    warm-up run of each. Every output is computed, as a Predictor does. Images per second =
    batch size / median time."""
    names = [o.name for o in fp32.get_outputs()]
    name = "logits" if "logits" in names else names[0]
    feed = fp32.get_inputs()[0].name
    size = min(batch_size, len(images))
    chunks = [images[i : i + size] for i in range(0, len(images), size)]
    chunks += [chunks[0]] * max(0, repeats - sum(len(c) == size for c in chunks))
    models = {"fp32": fp32, "int8": int8}
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    outs: dict[str, list[list[np.ndarray]]] = {"fp32": [], "int8": []}
    for session in models.values():
        session.run(names, {feed: chunks[0]})  # warm-up: allocations, kernel choice
    total = 2 * sum(len(c) for c in chunks)
    bar = console.progress("int8 check", total) if console else contextlib.nullcontext()
    with bar as progress:
        for k, chunk in enumerate(chunks):
            for key in ("fp32", "int8") if k % 2 == 0 else ("int8", "fp32"):
                start = time.perf_counter()
                out = models[key].run(names, {feed: chunk})
                elapsed = time.perf_counter() - start
                if len(chunk) == size:
                    times[key].append(elapsed)
                if k * size < len(images):  # the pass over the images, not a top-up
                    outs[key].append(out)
                if progress is not None:
                    progress.update(len(chunk))
    got = {
        k: {n: np.concatenate([o[i] for o in v]) for i, n in enumerate(names)}
        for k, v in outs.items()
    }
    top1 = {k: v[name].argmax(1) for k, v in got.items()}
    measured = {
        "output": name,
        "batch_size": size,
        "timings": len(times["fp32"]),
        "fp32_images_per_second": size / statistics.median(times["fp32"]),
        "int8_images_per_second": size / statistics.median(times["int8"]),
        "fp32_accuracy": float(np.mean(top1["fp32"] == labels)),
        "int8_accuracy": float(np.mean(top1["int8"] == labels)),
        "top1_agreement": float(np.mean(top1["fp32"] == top1["int8"])),
    }
    for extra in ("ood_score", "ood_pvalue"):  # the OOD outputs read int8 features: how far
        if extra in names:
            diff = np.abs(got["fp32"][extra].astype(np.float64) - got["int8"][extra])
            measured[f"{extra}_max_abs_diff"] = float(diff.max())
            measured[f"{extra}_mean_abs_diff"] = float(diff.mean())
    if threshold is not None and "ood_pvalue" in names:  # the OOD flag, as Predictor sets it
        flags = {k: v["ood_pvalue"] <= threshold for k, v in got.items()}
        measured["ood_flag_agreement"] = float(np.mean(flags["fp32"] == flags["int8"]))
        measured["fp32_ood_flagged"] = float(np.mean(flags["fp32"]))
        measured["int8_ood_flagged"] = float(np.mean(flags["int8"]))
    return measured


def _verdict(m: dict, min_speedup: float, max_drop: float) -> tuple[bool, str]:
    """The keep rule and its sentence."""
    speedup = m["int8_images_per_second"] / m["fp32_images_per_second"]
    drop = m["fp32_accuracy"] - m["int8_accuracy"]
    fast, close = speedup >= min_speedup, drop <= max_drop + 1e-9
    # the OOD flag reads int8 features against held-out scores computed in fp32: it may not
    # flag more validation images (in-distribution) than fp32 does, beyond max_drop of them
    # or one image, whichever is more (images near the threshold flip either way)
    rise = m.get("int8_ood_flagged", 0.0) - m.get("fp32_ood_flagged", 0.0)
    same_flags = rise <= max(max_drop, 1 / max(m["n_val"], 1)) + 1e-9
    why = ", ".join(
        w
        for w, bad in (
            ("too slow", not fast),
            ("accuracy lost", not close),
            ("more images flagged OOD", not same_flags),
        )
        if bad
    )
    kept = fast and close and same_flags
    flags = (
        f"; OOD flags on validation {m['int8_ood_flagged']:.1%} vs {m['fp32_ood_flagged']:.1%}"
        f" (agreeing on {m['ood_flag_agreement']:.1%} of images)"
        if "ood_flag_agreement" in m
        else ""
    )
    return kept, (
        f"int8 {'kept' if kept else f'not kept ({why})'}: {speedup:.2f}x as fast "
        f"as fp32 ({m['int8_images_per_second']:.0f} vs {m['fp32_images_per_second']:.0f} "
        f"img/s at batch {m['batch_size']}; at least {min_speedup:g}x needed), validation "
        f"accuracy {m['int8_accuracy']:.4f} vs {m['fp32_accuracy']:.4f} on {m['n_val']} images "
        f"(drop {drop:.4f}; at most {max_drop:g} allowed){flags}"
    )


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
        min_speedup, max_drop: the keep rule (defaults 1.2x and 0.01; with `ood_threshold`
            the int8 model may not flag more validation images as OOD than fp32, beyond
            max_drop of them or one image).
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
        measured = _measure(
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
        kept, reason = _verdict(measured, min_speedup, max_drop)
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

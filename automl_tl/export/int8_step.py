"""The int8 step of a fit: after model.onnx is written and checked, quantise it, calibrated on
a few training images, and time it against fp32 on validation images (export.quantize); the
run keeps model.int8.onnx only when it pays.

The verdict is remembered by content in the cache's models/ folder (the fp32 model's sha256,
the images used, the code's version): a warm re-fit that ends with the same model publishes
the remembered int8 file (sha256-verified) or the remembered refusal, and measures nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import OutputError
from ..core.files import file_sha256, write_atomic
from ..data.batches import iter_batches
from ..data.split import stratified_subset
from .quantize import int8_variant

__all__ = ["int8_step", "INT8_NAME", "CALIBRATION_IMAGES", "VALIDATION_IMAGES"]

INT8_NAME = "model.int8.onnx"
CALIBRATION_IMAGES = 32  # 16-128 measured the same accuracy; each costs ~0.04 s to calibrate
VALIDATION_IMAGES = 300  # one image is 0.33 points of the 1-point rule
KEEP = 8  # remembered verdicts


def _key(model_sha: str, samples) -> str:
    h = hashlib.sha256(f"int8-v1\0{__version__}\0{model_sha}\0".encode())
    for s in samples:
        h.update(f"{s.path}\0{s.label}\0".encode())
    return h.hexdigest()


def _recall(memo: Path, out: Path) -> dict | None:
    """The remembered record, with its int8 file published at `out` when it was kept; None
    when there is no memo or its file does not match its checksum."""
    try:
        record = json.loads(memo.read_text())
        data = memo.with_suffix(".onnx").read_bytes() if record["kept"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data is not None:
        if hashlib.sha256(data).hexdigest() != record.get("int8_sha256"):
            return None
        write_atomic(out, data)
        record["path"] = str(out)
    return {**record, "reused": True}


def _remember(memo: Path, record: dict, out: Path) -> None:
    """Keep the record (and the int8 file) beside the cache's models; never fails the fit."""
    try:
        if record["kept"]:
            data = out.read_bytes()
            record = {**record, "int8_sha256": hashlib.sha256(data).hexdigest()}
            write_atomic(memo.with_suffix(".onnx"), data)
        write_atomic(memo, json.dumps(record).encode())
    except (OSError, OutputError):
        return
    found = []
    for p in memo.parent.glob("int8-*.json"):
        with contextlib.suppress(OSError):
            found.append((p.stat().st_mtime_ns, p))
    for _, p in sorted(found, reverse=True)[KEEP:]:  # the newest KEEP verdicts stay
        for victim in (p, p.with_suffix(".onnx")):
            with contextlib.suppress(OSError):
                victim.unlink()


def int8_step(model_path: Path, data, prep, cache_root: Path, seed: int, console, threshold):
    """The int8 record of the run whose checked model is `model_path` (metrics.json's
    "int8"); writes model.int8.onnx beside it when int8 pays."""
    out = Path(model_path).with_name(INT8_NAME)
    calib = stratified_subset(data.train, CALIBRATION_IMAGES, seed)
    val = stratified_subset(data.val, VALIDATION_IMAGES, seed)
    memo = Path(cache_root) / "models" / f"int8-{_key(file_sha256(model_path), calib + val)}.json"
    record = _recall(memo, out)
    if record is not None:
        console.note(f"{record['reason']} (remembered from an earlier fit of the same model)")
        return record
    calibration = next(iter_batches([s.path for s in calib], prep, len(calib)))
    images = np.concatenate(list(iter_batches([s.path for s in val], prep, 64)))
    record = int8_variant(
        model_path, calibration, images, data.labels(val), out, console, ood_threshold=threshold
    )
    _remember(memo, record, out)
    return record

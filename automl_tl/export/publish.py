"""The export step of a fit: model.onnx written (joined to the embedding graph when the head
reads a frozen view, else traced), its metadata (classes, preprocessing, provenance), and the
check against torch on real held-out images before the run calls itself done."""

from __future__ import annotations

import platform
from pathlib import Path

from .. import __version__
from ..core.files import file_sha256
from ..data.batches import iter_batches
from ..features.stage_graph import read_sidecar
from ..train.model import ExportModel, Tail
from .check import check_parity
from .composed import composed_key, forget_composed, remember_composed, reuse_composed
from .onnx import compose_onnx, export_onnx

__all__ = ["metadata", "provenance", "export_model"]


def provenance(spec, weights: str | None, plan) -> dict:
    """What made the model: versions, the backbone and the sha256 of its weights, the case,
    the cut and the frozen view (the model's metadata holds no time: equal models are equal
    files)."""
    import torch

    path = Path(weights) if weights else spec.weights_path()
    return {
        "automl_tl": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backbone": spec.name,
        "weights_sha256": file_sha256(path) if path else None,
        "case": plan.case,
        "cut": plan.cut,
        "grid": plan.grid,
        "view": plan.view or plan.cut,
        # a second backbone beside the first on the same input: its name, view, input,
        # normalisation (inside the graph) and the sha256 of its weights
        **({"beside": dict(plan.paired)} if plan.paired else {}),
    }


def metadata(classes: list[str], spec, weights: str | None, plan, trust: dict | None = None):
    """The model's metadata, enough to write a client from: class names, what the input is
    and how an image becomes one, what the graph already does (normalisation, calibration),
    what each output is, the OOD threshold, and the model's provenance."""
    prep = spec.preprocessing
    does = {
        "normalisation": {
            "mean": list(prep.mean),
            "std": list(prep.std),
            "note": "(x - mean) / std per RGB channel, inside the graph: do not normalise",
        }
    }
    meta = {
        "classes": classes,
        "preprocessing": prep.resize_and_crop(),
        "input": {
            "name": "image",
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [0.0, 1.0],
            "shape": ["batch", 3, prep.crop_size, prep.crop_size],
            "how": f"decode, apply EXIF orientation, convert to RGB; resize the shorter side "
            f"to {prep.resize_size} ({prep.interpolation}), centre-crop "
            f"{prep.crop_size}x{prep.crop_size}; divide the 8-bit values by 255",
        },
        "outputs": {"logits": "class scores (batch, classes), in `classes` order"},
        "graph_does": does,
        "provenance": provenance(spec, weights, plan),
    }
    if trust:
        cal, ood = trust["calibration"], trust["ood"]
        t = cal["temperature"]
        does["calibration"] = {
            "method": cal["method"],
            "temperature": t,
            "note": f"the logits output is already divided by {t}",
        }
        meta["outputs"] = {
            "logits": "calibrated class scores (batch, classes), in `classes` order",
            "probabilities": "softmax of the calibrated logits (batch, classes)",
            "ood_score": "mean cosine similarity of the image's features to its "
            f"{ood['k']} nearest training images (batch,); lower = less familiar",
            "ood_pvalue": "conformal p-value of the image belonging to the training "
            "distribution (batch,); flag the image when it is <= ood.threshold",
        }
        meta["ood"] = {k: ood[k] for k in ("threshold", "k", "reference_images", "held_out_images")}
    return meta


def export_model(
    model: ExportModel,
    path: Path,
    meta: dict,
    crop_size: int,
    check_paths: list[Path],
    composed: Path | None = None,
    output: str | None = None,
    stored=None,
    width: int | None = None,
    console=None,
) -> dict:
    """Write model.onnx at `path` and check it against `model` on the images `check_paths`;
    returns the check's numbers.

    With `composed` (the embedding graph) the model is that graph cut at its tensor `output`
    joined to the head (`width` features in), and checked at the cut against `stored`, the
    cached features of the same images. A joined model is remembered by content beside the
    graph: a warm re-fit that ends with the same head publishes the remembered file
    (sha256-verified) instead of composing it again, and the same check runs on it; one that
    fails the check is forgotten and composed afresh."""
    from ..data.preprocess import Preprocessing

    prep = Preprocessing.from_dict(meta["preprocessing"])
    batch = next(iter_batches(check_paths, prep, len(check_paths)))

    def check() -> dict:
        return check_parity(model, path, batch, stage_output=output, reference=stored)

    if composed is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, crop_size, meta)
        return check()
    from ..core.errors import ExportError

    record = read_sidecar(composed)  # the cache verified it when it handed it over
    graph_sha = record["sha256"] if record else file_sha256(composed)
    key = composed_key(graph_sha, output, Tail(model), meta)
    if reuse_composed(composed, key, path):
        try:
            return {**check(), "reused_composition": True}
        except ExportError:  # not the model of this key after all: replaced below
            forget_composed(composed, key)
    compose_onnx(composed, output, model, width, path, meta)
    result = {**check(), "reused_composition": False}
    remember_composed(composed, key, path, console)  # only a model that passed
    return result

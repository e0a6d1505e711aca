"""Run an exported model with onnxruntime, numpy and Pillow only (no torch).

from automl_tl.export.predictor import Predictor
Predictor("runs/x").predict("cat.jpg", top_k=3)

A model exported by this version also outputs calibrated probabilities and, per image, the
p-value of belonging to the training distribution (`ood_pvalue`); `ood` is that p-value at
or below the threshold in the model's metadata. Older models give `ood` and `ood_pvalue`
as None.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..core.errors import AutoTLError
from ..core.machine import ort_providers
from ..data.files import expand_paths
from ..data.preprocess import Preprocessing, batch_to_float, load_for_model

__all__ = ["Predictor", "model_file"]

_PREFIX = "automl_tl."
MODEL_NAME = "model.onnx"


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _probabilities(out: dict[str, np.ndarray]) -> np.ndarray:
    """The graph's calibrated probabilities; softmax of the logits for an older model."""
    return out["probabilities"] if "probabilities" in out else _softmax(out["logits"])


def model_file(model: str | os.PathLike) -> Path:
    """The model.onnx of a run folder, or `model` itself when it is a file."""
    path = Path(model)
    if path.is_dir():
        if (path / MODEL_NAME).is_file():
            return path / MODEL_NAME
        raise AutoTLError(
            f"'{path}' is a folder without {MODEL_NAME}; pass the folder of a finished fit "
            f"(runs/<run>) or its {MODEL_NAME}"
        )
    if not path.is_file():
        raise AutoTLError(f"model '{path}' not found; pass a run folder or its {MODEL_NAME}")
    return path


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class Predictor:
    """An exported automl-tl model (a run folder or its model.onnx); class names,
    preprocessing and the OOD threshold come from its metadata."""

    def __init__(
        self,
        model: str | os.PathLike,
        providers: list[str] | None = None,
        options: ort.SessionOptions | None = None,
    ):
        path = model_file(model)
        providers = providers or ort_providers()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:
            raise AutoTLError(f"'{path}' is not a loadable ONNX model: {_first_line(e)}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if _PREFIX + "classes" not in meta:
            raise AutoTLError(f"'{path}' has no automl-tl metadata; export it with automl-tl")
        self.path = path
        self.classes: list[str] = json.loads(meta[_PREFIX + "classes"])
        self.preprocessing = Preprocessing.from_dict(json.loads(meta[_PREFIX + "preprocessing"]))
        self.metadata = {k[len(_PREFIX) :]: v for k, v in meta.items() if k.startswith(_PREFIX)}
        ood = json.loads(self.metadata.get("ood", "null")) or {}
        self.ood_threshold: float | None = ood.get("threshold")
        self._input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph, by name, for a float32 NCHW batch in [0, 1]."""
        values = self.session.run(None, {self._input: batch})
        return dict(zip(self.outputs, values, strict=True))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits (calibrated when the model is) for a float32 NCHW batch in [0, 1]."""
        return self.run(batch)["logits"]

    def decode(self, data: bytes) -> np.ndarray:
        """An encoded image (the bytes of a file) as the model's uint8 (crop, crop, 3) input;
        AutoTLError with one line when it is not a readable image."""
        if not data:
            raise AutoTLError("empty upload: send the bytes of an image file")
        try:
            return load_for_model(io.BytesIO(data), self.preprocessing)
        except Exception as e:
            why = _first_line(e)
            if "cannot identify image file" in why:  # Pillow names the BytesIO object
                why = "not an image format Pillow can read"
            raise AutoTLError(f"cannot read image: {why}") from None

    def _records(self, out: dict[str, np.ndarray], top_k: int) -> list[dict]:
        probs = _probabilities(out)
        pvalues = out.get("ood_pvalue")
        records = []
        for i, row in enumerate(probs):
            order = np.argsort(-row)[:top_k]
            record = {"top": [[self.classes[j], float(row[j])] for j in order]}
            if pvalues is not None and self.ood_threshold is not None:
                p = float(pvalues[i])
                record["ood"], record["ood_pvalue"] = bool(p <= self.ood_threshold), p
            else:
                record["ood"], record["ood_pvalue"] = None, None
            records.append(record)
        return records

    def predict_arrays(self, arrays: list[np.ndarray], top_k: int = 1) -> list[dict]:
        """One record per decoded image (from `decode`): `top` [[label, probability], ...]
        most probable first, `ood` and `ood_pvalue`."""
        if not arrays:
            return []
        top_k = max(1, min(top_k, len(self.classes)))
        return self._records(self.run(batch_to_float(arrays)), top_k)

    def predict_proba(self, paths, batch_size: int = 32) -> np.ndarray:
        """Class probabilities (n_files, n_classes) of image files or folders; a file that
        cannot be read raises AutoTLError naming it."""
        files = expand_paths([paths] if isinstance(paths, str | os.PathLike) else paths)
        out = []
        for start in range(0, len(files), batch_size):
            arrays = []
            for f in files[start : start + batch_size]:
                try:
                    arrays.append(load_for_model(f, self.preprocessing))
                except Exception as e:
                    raise AutoTLError(f"cannot read image '{f}': {_first_line(e)}") from None
            o = self.run(batch_to_float(arrays))
            out.append(_probabilities(o))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, paths, top_k: int = 1, batch_size: int = 32) -> list[dict]:
        """One dict per image file (a path, a folder or a list of them): `path`, `top`
        [[label, probability], ...], `ood` and `ood_pvalue`; or `path` and `error`."""
        files = expand_paths([paths] if isinstance(paths, str | os.PathLike) else paths)
        results, arrays, owners = [], [], []

        def flush():
            for i, record in zip(owners, self.predict_arrays(arrays, top_k), strict=True):
                results[i].update(record)
            arrays.clear()
            owners.clear()

        for f in files:
            results.append({"path": str(f)})
            try:
                if not f.is_file():  # opening a pipe named x.jpg would wait forever
                    raise OSError("not a regular file" if f.exists() else "no such file")
                arrays.append(load_for_model(f, self.preprocessing))
                owners.append(len(results) - 1)
            except Exception as e:
                results[-1]["error"] = f"cannot read image: {e}"
            if len(arrays) >= batch_size:
                flush()
        flush()
        return results

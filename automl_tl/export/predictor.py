"""Run an exported model with onnxruntime, numpy and Pillow only (no torch).

from automl_tl.export.predictor import Predictor
Predictor("runs/x/model.onnx").predict(["cat.jpg"], top_k=3)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..core.errors import AutoTLError
from ..core.machine import ort_providers
from ..data.files import expand_paths
from ..data.preprocess import Preprocessing, batch_to_float, load_for_model

__all__ = ["Predictor"]

_PREFIX = "automl_tl."


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """An exported automl-tl model; class names and preprocessing come from its metadata."""

    def __init__(self, model_path: str | os.PathLike, providers: list[str] | None = None):
        path = Path(model_path)
        if not path.is_file():
            raise AutoTLError(f"model '{path}' not found; pass the model.onnx of a run folder")
        providers = providers or ort_providers()
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:
            raise AutoTLError(f"'{path}' is not a loadable ONNX model: {e}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if _PREFIX + "classes" not in meta:
            raise AutoTLError(f"'{path}' has no automl-tl metadata; export it with automl-tl")
        self.classes: list[str] = json.loads(meta[_PREFIX + "classes"])
        self.preprocessing = Preprocessing.from_dict(json.loads(meta[_PREFIX + "preprocessing"]))
        self.metadata = {k[len(_PREFIX) :]: v for k, v in meta.items() if k.startswith(_PREFIX)}
        self._input = self.session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits for a float32 NCHW batch in [0, 1]."""
        return self.session.run(None, {self._input: batch})[0]

    def predict(self, paths, top_k: int = 1, batch_size: int = 32) -> list[dict]:
        """One dict per image file: path and `top` [(label, probability)], or path and `error`."""
        files = expand_paths(paths)
        top_k = max(1, min(top_k, len(self.classes)))
        results, arrays, owners = [], [], []

        def flush():
            if not arrays:
                return
            probs = _softmax(self.logits(batch_to_float(arrays)))
            for i, row in zip(owners, probs, strict=True):
                order = np.argsort(-row)[:top_k]
                results[i]["top"] = [(self.classes[j], float(row[j])) for j in order]
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

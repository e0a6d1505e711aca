"""AutoTransfer: the scikit-learn style estimator over automl_tl.pipeline."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np

from .core.errors import AutoTLError, NotFittedError
from .settings import Settings

__all__ = ["AutoTransfer", "BaseEstimator"]


class BaseEstimator:
    """What sklearn.base.BaseEstimator gives, without importing scikit-learn (its import,
    scipy included, costs about a second on every fit): get_params / set_params from the
    __init__ signature (so sklearn.base.clone and grid searches work) and a repr that shows
    the parameters changed from their defaults."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in params if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params) -> BaseEstimator:
        for name, value in params.items():
            if name not in self._get_param_names():
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {self}. "
                    f"Valid parameters are: {self._get_param_names()!r}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        init = inspect.signature(type(self).__init__).parameters
        changed = [
            f"{k}={v!r}" for k, v in self.get_params().items() if repr(v) != repr(init[k].default)
        ]
        return f"{type(self).__name__}({', '.join(changed)})"


class AutoTransfer(BaseEstimator):
    """Adapt a pretrained backbone to a folder of labelled images and export it to ONNX.

    Every parameter is a field of automl_tl.settings.Settings, which says what it means and
    which values it takes (the CLI's `automl-tl fit --help` shows the same texts). The most
    used: `backbone` (`automl-tl backbones`), `case` (1-4, instead of the planner's),
    `time_budget` (seconds for the whole fit; fine-tuning runs what its measured estimate
    fits), `out` (the run folder), `overwrite` / `resume`, `seed`, `quiet`.

    After `fit`: `classes_`, `audit_`, `plan_`, `profile_`, `metrics_`, `history_`,
    `model_` (torch), `onnx_path_`, `export_check_`, `run_dir_`, `report_path_`,
    `cache_stats_`, `spec_` (the backbone at the input the model takes).
    """

    def __init__(
        self,
        backbone: str = "auto",
        weights: str | None = None,
        allow_download: bool = False,
        case: int | None = None,
        strategy: str | None = None,
        source_bank: str | os.PathLike | None = None,
        size_ratio: float | None = None,
        similarity_pvalue: float | None = None,
        time_budget: float | None = None,
        max_analysis_images: int = 2000,
        finetune_epochs: int = 10,
        finetune: str = "auto",
        input_size: str | int = "auto",
        resume: bool = False,
        overwrite: bool = False,
        val_fraction: float = 0.2,
        epochs: int = 100,
        patience: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_dtype: str = "fp16",
        engine: str = "auto",
        seed: int = 0,
        strict: bool = False,
        drop_label_issues: bool = False,
        int8: bool = True,
        out: str | os.PathLike | None = None,
        quiet: bool = True,
    ):
        for name, value in locals().items():  # stored as given; checked by fit (sklearn rule)
            if name != "self":
                setattr(self, name, value)

    def _settings(self) -> Settings:
        return Settings(**self.get_params())

    def fit(self, data: str | os.PathLike) -> AutoTransfer:
        """Scan, audit, split, analyse, plan, train, evaluate, export; returns self."""
        from . import pipeline

        result = pipeline.fit(data, self._settings())
        self.classes_, self.audit_ = result.data.classes, result.data.report
        self.plan_, self.profile_ = result.plan, result.analysis.profile
        self.spec_, self.model_ = result.spec, result.trained.model
        self.history_, self.metrics_ = result.trained.history, result.metrics
        self.cache_stats_, self.export_check_ = result.cache_stats, result.export_check
        self.run_dir_, self.onnx_path_ = result.run_dir, result.model_path
        self.report_path_ = result.report_path
        return self

    def analyze(self, data: str | os.PathLike):
        """Scan, audit, split, analyse and plan without training; returns the plan."""
        from . import pipeline

        result = pipeline.analyze(data, self._settings())
        self.classes_, self.audit_ = result.data.classes, result.data.report
        self.spec_ = result.spec
        self.profile_, self.plan_ = result.analysis.profile, result.plan
        return self.plan_

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this AutoTransfer is not fitted yet; call fit(data_folder) first")

    def _predictor(self):
        """The exported model in onnxruntime: the one fast path for every prediction."""
        from .export.predictor import Predictor

        self._check_fitted()
        if getattr(self, "_onnx", (None,))[0] != self.onnx_path_:
            self._onnx = (self.onnx_path_, Predictor(self.onnx_path_))
        return self._onnx[1]

    def predict_proba(self, paths) -> np.ndarray:
        """Class probabilities (n_images, n_classes) for image files or folders (one path
        or a list), from the exported model: calibrated, as production sees them."""
        return self._predictor().predict_proba(paths, self.batch_size or 32)

    def predict(self, paths) -> list[str]:
        """Predicted class name for each image file (folders are expanded)."""
        return [self.classes_[i] for i in self.predict_proba(paths).argmax(1)]

    def score(self, data: str | os.PathLike) -> float:
        """Accuracy on a labelled folder or CSV laid out like the training data. Images of
        classes the model does not know are left out, and so are files that cannot be read
        (a warning says how many)."""
        import warnings

        from .data.scan import scan

        self._check_fitted()
        samples = [s for s in scan(data).samples if s.label in self.classes_]
        records = self._predictor().predict([s.path for s in samples], 1, self.batch_size or 32)
        hits = [r["top"][0][0] == s.label for r, s in zip(records, samples, strict=True)
                if "error" not in r]  # fmt: skip
        if len(hits) < len(samples):
            warnings.warn(f"score: {len(samples) - len(hits)} unreadable files left out",
                          stacklevel=2)  # fmt: skip
        if not hits:
            raise AutoTLError(f"no readable images of the model's classes in '{data}'")
        return float(np.mean(hits))

    def export_onnx(self, path: str | os.PathLike) -> Path:
        """Export the fitted model (normalisation inside, dynamic batch) to `path`."""
        from .export.onnx import export_onnx
        from .export.publish import metadata

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        trust = {k: self.metrics_[k] for k in ("calibration", "ood") if k in self.metrics_}
        meta = metadata(self.classes_, self.spec_, self.weights, self.plan_, trust or None)
        return export_onnx(self.model_, path, self.spec_.preprocessing.crop_size, meta)

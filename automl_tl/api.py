"""AutoTransfer: the estimator behind `automl-tl fit` (scikit-learn conventions)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator

from . import __version__
from .backbone import FeatureExtractor, file_sha256
from .console import Console
from .data import audit, scan, split
from .embed import embed, iter_batches
from .errors import NotFittedError
from .evaluate import classification_metrics
from .export import ExportModel, check_parity, export_onnx
from .inference import expand_paths
from .planner import make_plan, profile_dataset
from .plugins import get_plugins
from .report import RunFolder, default_run_dir
from .strategy import HeadTask
from .train import HeadConfig

__all__ = ["AutoTransfer"]


class AutoTransfer(BaseEstimator):
    """Adapt a pretrained backbone to a folder of labelled images and export it to ONNX.

    Args:
        backbone: registered backbone name (`automl-tl backbones` lists them).
        weights: optional local weight file for the backbone.
        allow_download: let the backbone download default weights that are not on disk.
        case: force a case (1-4) instead of the planner's choice.
        strategy: force a registered strategy by name (`automl-tl strategies`).
        val_fraction: share of each class held out for validation when the data has no val/.
        epochs, patience, lr, weight_decay: head training.
        batch_size: images per embedding batch.
        seed: seeds the split and training.
        strict: turn every data problem into an error.
        out: run folder; default a new folder under `runs/`.
        quiet: no progress output.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | None = None,
        allow_download: bool = False,
        case: int | None = None,
        strategy: str | None = None,
        val_fraction: float = 0.2,
        epochs: int = 100,
        patience: int = 15,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        seed: int = 0,
        strict: bool = False,
        out: str | os.PathLike | None = None,
        quiet: bool = True,
    ):
        self.backbone = backbone
        self.weights = weights
        self.allow_download = allow_download
        self.case = case
        self.strategy = strategy
        self.val_fraction = val_fraction
        self.epochs = epochs
        self.patience = patience
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.strict = strict
        self.out = out
        self.quiet = quiet

    # ----------------------------------------------------------------- fit
    def fit(self, data: str | os.PathLike) -> AutoTransfer:
        """Scan, audit, split, plan, embed, train, evaluate, export; returns self."""
        t0 = time.perf_counter()
        console = Console(quiet=self.quiet)
        plugins = get_plugins()
        spec = plugins.backbone(self.backbone)
        run = RunFolder(self.out if self.out is not None else default_run_dir(data))
        report = audit(scan(data, exclude=(run.path,)), console=console, strict=self.strict)
        train, val, test = split(report.samples, self.val_fraction, self.seed)
        head_cfg = HeadConfig(
            epochs=self.epochs, patience=self.patience, lr=self.lr,
            weight_decay=self.weight_decay, seed=self.seed,
        )  # fmt: skip
        profile = profile_dataset(*([s.label for s in part] for part in (train, val, test)))
        plan = make_plan(profile, spec, head_cfg, plugins, self.case, self.strategy)
        for reason in plan.reasons:
            console.note(f"plan: {reason}")
        self.classes_, self.plan_, self.audit_, self.spec_ = report.classes, plan, report, spec
        extractor = FeatureExtractor(
            spec.build(self.weights, allow_download=self.allow_download),
            spec.preprocessing,
            spec.stage_index(plan.cut),
        )
        everything = train + val + test
        paths = [s.path for s in everything]
        feats = embed(extractor, paths, spec.preprocessing, self.batch_size, console)[-1]
        y = np.array([report.classes.index(s.label) for s in everything])
        n_tr, n_va = len(train), len(val)
        task = HeadTask(feats[:n_tr], y[:n_tr], feats[n_tr : n_tr + n_va],
                        y[n_tr : n_tr + n_va], len(report.classes), head_cfg, console)  # fmt: skip
        result = plugins.strategy(plan.strategy).fit(task)
        self.model_ = ExportModel(extractor, result.head).eval()
        self.history_, self.run_dir_ = result.history, run.path
        self.metrics_ = self._metrics(result, feats, y, n_tr, n_va, time.perf_counter() - t0)
        self.onnx_path_ = run.file("model.onnx")
        self.export_check_ = self._export(self.onnx_path_, [s.path for s in val[:16]])
        self.metrics_["export_check"] = self.export_check_
        for name, obj in (
            ("plan.json", plan.to_dict()),
            ("metrics.json", self.metrics_),
            ("classes.json", report.classes),
            ("audit.json", report.to_dict()),
        ):
            run.write_json(name, obj)
        return self

    def _metrics(self, result, feats, y, n_tr, n_va, seconds) -> dict:
        head = result.head.eval()
        with torch.no_grad():
            pred = head(torch.from_numpy(feats)).argmax(1).numpy()
        sl_val, sl_test = slice(n_tr, n_tr + n_va), slice(n_tr + n_va, None)
        metrics = {
            "validation": classification_metrics(y[sl_val], pred[sl_val], self.classes_),
            "train_accuracy": float((pred[:n_tr] == y[:n_tr]).mean()),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "history": result.history,
            "fit_seconds": round(seconds, 2),
        }
        if len(y) > n_tr + n_va:
            metrics["test"] = classification_metrics(y[sl_test], pred[sl_test], self.classes_)
        return metrics

    def _provenance(self) -> dict:
        weights = Path(self.weights) if self.weights else self.spec_.weights_path()
        return {
            "automl_tl": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "backbone": self.spec_.name,
            "weights_sha256": file_sha256(weights) if weights else None,
            "case": self.plan_.case,
            "cut": self.plan_.cut,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def _export(self, path: Path, check_paths: list[Path]) -> dict:
        self.export_onnx(path)
        prep = self.spec_.preprocessing
        batch = next(iter_batches(check_paths, prep, len(check_paths)))
        return check_parity(self.model_, path, batch)

    # ------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this AutoTransfer is not fitted yet; call fit(data_folder) first")

    def predict_proba(self, paths) -> np.ndarray:
        """Class probabilities (n_images, n_classes) for image files or folders."""
        self._check_fitted()
        files = expand_paths([paths] if isinstance(paths, (str, os.PathLike)) else paths)
        prep = self.spec_.preprocessing
        out = []
        with torch.inference_mode():
            for batch in iter_batches(files, prep, self.batch_size):
                out.append(torch.softmax(self.model_(torch.from_numpy(batch)), 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)))

    def predict(self, paths) -> list[str]:
        """Predicted class name for each image file (folders are expanded)."""
        return [self.classes_[i] for i in self.predict_proba(paths).argmax(1)]

    def score(self, data: str | os.PathLike) -> float:
        """Accuracy on a labelled folder or CSV laid out like the training data."""
        self._check_fitted()
        report = audit(scan(data), strict=False)
        samples = [s for s in report.samples if s.label in self.classes_]
        pred = self.predict([s.path for s in samples])
        return float(np.mean([p == s.label for p, s in zip(pred, samples, strict=True)]))

    def export_onnx(self, path: str | os.PathLike) -> Path:
        """Export the fitted model (normalisation inside, dynamic batch) to `path`."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        prep = self.spec_.preprocessing
        metadata = {
            "classes": self.classes_,
            "preprocessing": prep.to_dict(),
            "provenance": self._provenance(),
        }
        return export_onnx(self.model_, path, prep.crop_size, metadata)

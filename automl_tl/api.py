"""AutoTransfer: the estimator behind `automl-tl fit` (scikit-learn conventions)."""

from __future__ import annotations

import dataclasses
import io
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__, ops
from ._estimator import BaseEstimator  # sklearn's interface, without importing sklearn
from .analysis import Analysis, analyse
from .backbone import FeatureExtractor, file_sha256
from .cache import default_cache_dir
from .console import Console
from .data import audit, scan, split, split_summary
from .distributed import init_distributed
from .embed import iter_batches
from .errors import AutoTLError, ExportError, NotFittedError
from .evaluate import classification_metrics
from .export import (
    ExportModel,
    check_parity,
    compose_onnx,
    composed_key,
    export_onnx,
    forget_composed,
    remember_composed,
    reuse_composed,
)
from .features import FeatureCache
from .inference import expand_paths
from .memo import Memo
from .planner import Plan, Thresholds, make_plan
from .plugins import get_plugins
from .report import RunFolder, default_run_dir
from .report_html import misclassified, write_report
from .similarity import SourceBank
from .strategy import HeadTask, ImageTask
from .train import HeadConfig

__all__ = ["AutoTransfer"]

# The built-in frozen strategies of cases 1 and 2, which the view measurement picks between.
_FROZEN_BUILTINS = ("linear_head", "cut_head")


class AutoTransfer(BaseEstimator):
    """Adapt a pretrained backbone to a folder of labelled images and export it to ONNX.

    Args:
        backbone: registered backbone name (`automl-tl backbones` lists them).
        weights: optional local weight file for the backbone.
        allow_download: let the backbone download default weights that are not on disk.
        case: force a case (1-4) instead of the planner's choice.
        strategy: force a registered strategy by name (`automl-tl strategies`).
        source_bank: path of a source bank (`automl-tl source-bank build`); default: the
            backbone's data-free bank (its source classifier's class vectors).
        size_ratio, similarity_pvalue: override the planner's thresholds (see planner.py).
        time_budget: seconds for the whole fit, analysis to export (default
            lpft.DEFAULT_TIME_BUDGET, 20 minutes); fine-tuning runs only what its measured
            estimate fits into what is left.
        finetune: how cases 3 and 4 fine-tune: "auto" (the candidate that trains the most
            stages within the budget), "partial" (top stages on cached maps) or "full".
        max_analysis_images: images embedded for the profile (a stratified subset).
        finetune_epochs: epochs of the fine-tuning cases (3, 4).
        input_size: the input crop of fine-tuning on images (full, from scratch): "auto"
            (smaller than the backbone's own when the images are far smaller than it, e.g.
            128 for 28x28 digits; imagedata.choose_input), "backbone" or a multiple of 32.
            Frozen heads and partial fine-tuning stay at the backbone's own size.
        resume: continue an interrupted fine-tuning run in the same `out` folder.
        overwrite: replace a finished run already in `out` (by default it is kept: error).
        val_fraction: share of each class held out for validation when the data has no val/.
        epochs, patience, lr, weight_decay: head training.
        batch_size: images per embedding batch (default: chosen from the available memory).
        cache_dir: feature cache folder (default: $AUTOML_TL_CACHE_DIR or the user cache).
        cache_dtype: how cached features are stored, "fp16" or "int8" (per-row scale).
        engine: frozen-backbone runtime, "auto" (onnxruntime on CPU), "onnxruntime", "torch".
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
        out: str | os.PathLike | None = None,
        quiet: bool = True,
    ):
        self.backbone = backbone
        self.weights = weights
        self.allow_download = allow_download
        self.case = case
        self.strategy = strategy
        self.source_bank = source_bank
        self.size_ratio = size_ratio
        self.similarity_pvalue = similarity_pvalue
        self.time_budget = time_budget
        self.max_analysis_images = max_analysis_images
        self.finetune_epochs = finetune_epochs
        self.finetune = finetune
        self.input_size = input_size
        self.resume = resume
        self.overwrite = overwrite
        self.val_fraction = val_fraction
        self.epochs = epochs
        self.patience = patience
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.cache_dtype = cache_dtype
        self.engine = engine
        self.seed = seed
        self.strict = strict
        self.out = out
        self.quiet = quiet

    # ----------------------------------------------------------------- fit
    def fit(self, data: str | os.PathLike) -> AutoTransfer:
        """Scan, audit, split, analyse, plan, train, evaluate, export; returns self.

        The run folder is locked for the whole fit; a finished run in it is kept unless
        `overwrite` (replace it) or `resume` (continue it) is set."""
        t0 = time.perf_counter()
        rank, size = init_distributed()  # (0, 1) unless launched by torchrun
        if size > 1 and self.out is None:
            raise AutoTLError("under torchrun pass --out DIR so every process uses one run folder")
        run = RunFolder(self.out if self.out is not None else default_run_dir(data))
        # Under torchrun the ranks share rank 0's folder: rank 0 alone holds the lock.
        with run.claim(self.overwrite, self.resume, lock=rank == 0):
            return self._fit(data, run, rank, t0)

    def _fit(self, data, run: RunFolder, rank: int, t0: float) -> AutoTransfer:
        console = Console(quiet=self.quiet) if rank == 0 else Console(True, io.StringIO())
        plugins = get_plugins()
        spec = plugins.backbone(self.backbone)
        memo = self._memo(console)
        report = audit(scan(data, exclude=(run.path,)), console, self.strict, memo=memo)
        train, val, test = split(report.samples, self.val_fraction, self.seed)
        self.classes_, self.audit_, self.spec_ = report.classes, report, spec
        self.run_dir_ = run.path
        net = spec.build(self.weights, allow_download=self.allow_download)
        features = self._features(spec, net, console)
        analysis = self._analyse(spec, net, train, val, test, console, features)
        plan = self._plan(analysis, spec, plugins)
        self.plan_, self.profile_ = plan, analysis.profile
        fitted = None  # the chosen frozen head, when the view choice just fitted it
        if self._searches(plan):
            fitted = self._choose_view(plan, features, train, val, console)
        strategy = plugins.strategy(plan.strategy)
        parts = (train, val, test)
        if strategy.kind == "images":
            warm = self._warm_start(plan, features, parts, console)
            tuning = self._tuning_input(plan, train)
            deadline = self._deadline(plan, t0)
            estimates = self._estimates(
                plan, net, features, warm, analysis, parts, deadline, tuning
            )
        for reason in plan.reasons:
            console.note(f"plan: {reason}")
        if strategy.kind == "images":
            context = (net, features, warm, estimates, deadline, tuning)
            result, preds = self._fit_images(strategy, parts, run, console, context)
        else:
            result, preds = self._fit_features(strategy, net, features, parts, console, fitted)
        self.history_ = result.history
        self.cache_stats_ = {**features.stats.to_dict(), "backend": ops.backend()}
        self.metrics_ = self._metrics(result, preds, parts, time.perf_counter() - t0)
        self.metrics_["feature_cache"] = self.cache_stats_
        if strategy.kind == "images":
            self.metrics_["warm_start"] = self._warm_metrics(warm, val, test)
        # which split chose the model, and what the test number means (leakage left out)
        self.metrics_["split"] = split_summary(report, parts, self.val_fraction, self.seed)
        self.onnx_path_ = run.file("model.onnx")
        if rank != 0:  # under torchrun, rank 0 alone exports and writes the run folder
            self.export_check_ = {}
            return self
        # the embedding graph joined to the head; a joined view (several outputs) is traced
        joins = strategy.kind != "images" and not plan.parts
        composed = features.onnx_path() if joins else None
        view = plan.view or plan.cut
        stored = features.rows(val[:16], view).dequantize().numpy() if composed else None
        output = f"stage{features.view_names.index(view)}" if composed else None
        self.export_check_ = self._export(
            self.onnx_path_, [s.path for s in val[:16]], composed, stored, output, console
        )
        self.metrics_["export_check"] = self.export_check_
        for name, obj in (
            ("plan.json", plan.to_dict()),
            ("metrics.json", self.metrics_),
            ("classes.json", report.classes),
            ("audit.json", report.to_dict()),
        ):
            run.write_json(name, obj)
        self.report_path_ = write_report(run.path, self._report_data(data, val, preds[1]))
        console.note(f"report: {self.report_path_}")
        return self

    def _report_data(self, data, val, pred_val) -> dict:
        """What report.html shows (see automl_tl.report_html)."""
        y_val = self._labels(val)
        return {
            "title": f"automl-tl run: {Path(data).resolve().name}",
            "created": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "data_path": str(Path(data).resolve()),
            "backbone": self.spec_.name,
            "audit": self.audit_.to_dict(),
            "plan": self.plan_.to_dict(),
            "profile": dataclasses.asdict(self.profile_),
            "metrics": self.metrics_,
            "export_check": self.export_check_,
            "classes": self.classes_,
            "misclassified": misclassified(
                [s.path for s in val], y_val, pred_val, self.classes_, limit=8
            ),
            "cache": getattr(self, "cache_stats_", None),
        }

    def analyze(self, data: str | os.PathLike) -> Plan:
        """Scan, audit, split, analyse and plan without training; returns the plan."""
        console = Console(quiet=self.quiet)
        plugins = get_plugins()
        spec = plugins.backbone(self.backbone)
        report = audit(scan(data), console, self.strict, memo=self._memo(console))
        train, val, test = split(report.samples, self.val_fraction, self.seed)
        self.classes_, self.audit_, self.spec_ = report.classes, report, spec
        net = spec.build(self.weights, allow_download=self.allow_download)
        features = self._features(spec, net, console)
        analysis = self._analyse(spec, net, train, val, test, console, features)
        self.profile_, self.plan_ = analysis.profile, self._plan(analysis, spec, plugins)
        return self.plan_

    def _labels(self, samples) -> np.ndarray:
        return np.array([self.classes_.index(s.label) for s in samples], dtype=np.int64)

    def _cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()

    def _memo(self, console: Console | None = None) -> Memo:
        return Memo(self._cache_root(), console)

    def _features(self, spec, net, console, views=None) -> FeatureCache:
        return FeatureCache(
            spec,
            net,
            self._cache_root(),
            self.cache_dtype,
            self.engine,
            self.batch_size,
            console,
            views=views,
        )

    def _fit_features(self, strategy, net, features: FeatureCache, parts, console, fitted=None):
        """Frozen backbone: the cut stage's rows from the feature cache (computed where
        missing), handed to the strategy as stored rows and as float32 arrays (and `fitted`,
        the view choice's head on those rows, when it has one)."""
        train, val, test = parts
        prep = self.spec_.preprocessing
        cut = self.spec_.stage_index(self.plan_.cut)
        extractor = FeatureExtractor(net, prep, cut, grid=self.plan_.grid, parts=self._parts())
        everything = train + val + test
        rows = features.rows(everything, self.plan_.view or self.plan_.cut)
        n_tr, n_va = len(train), len(val)
        y = self._labels(everything)
        rows_train = rows.subset(np.arange(n_tr))
        rows_val = rows.subset(np.arange(n_tr, n_tr + n_va))
        task = HeadTask(
            np.asarray(rows_train),
            y[:n_tr],
            np.asarray(rows_val),
            y[n_tr : n_tr + n_va],
            len(self.classes_),
            self._head_config(),
            console,
            rows_train,
            rows_val,
            fitted,
        )
        result = strategy.fit(task)
        self.model_ = ExportModel(extractor, result.head).eval()
        head = result.head.eval()
        with torch.no_grad():  # in chunks: a head may build (rows x training set) matrices
            pred = np.concatenate(
                [
                    head(rows.dequantize(torch.from_numpy(c))).argmax(1).numpy()
                    for c in np.array_split(np.arange(len(rows)), max(1, len(rows) // 4096))
                ]
            )
        return result, (pred[:n_tr], pred[n_tr : n_tr + n_va], pred[n_tr + n_va :])

    def _searches(self, plan: Plan) -> bool:
        """Whether the frozen head's input is measured: for the built-in frozen strategies,
        unless the user fixed case 1 (last stage, pooled) or named a strategy."""
        return plan.strategy in _FROZEN_BUILTINS and self.strategy is None and self.case != 1

    def _choose_view(self, plan: Plan, features: FeatureCache, train, val, console):
        """Measure a head on every cached view (stage x grid) and put the choice into `plan`
        (cut, grid, view, case, strategy, reasons, candidates); remembered by content.
        Returns the chosen view's fitted logistic regression, or None when remembered."""
        from .candidates import choose_view

        last = self.spec_.stages[-1].name
        y_train, y_val = self._labels(train), self._labels(val)
        chosen, table, reason, se, fitted = choose_view(
            features, train, val, y_train, y_val, last, self.seed, console, self.case != 2
        )
        case = 1 if chosen.name == last else 2
        if case != plan.case:
            plan.reasons.append(
                f"the measurement overrides the size/similarity rule: case {plan.case} -> "
                f"case {case}"
            )
        plan.case, plan.strategy = case, _FROZEN_BUILTINS[case - 1]
        self._set_view(plan, chosen)
        plan.candidates = table
        # The k-NN probes' cut point is a proxy; the measured choice replaces it.
        plan.reasons = [r for r in plan.reasons if not r.startswith("cut point:")] + [reason]
        best = next(c for c in table if c["view"] == chosen.name)
        acc = best["val_acc"]
        plan.expected_accuracy = {
            "low": round(max(0.0, acc - 1.96 * se), 4),
            "high": round(min(1.0, acc + 1.96 * se), 4),
            "probe_accuracy": acc,
            "basis": f"95% interval of the chosen head's validation accuracy on "
            f"{len(val)} images (chosen among {len(table)} views on that split)",
        }
        return fitted

    def _warm_start(self, plan: Plan, features: FeatureCache, parts, console):
        """The frozen choice that fine-tuning starts from and falls back to: a head on every
        cached view measured on validation (as cases 1/2 choose), then its logistic regression
        and its predictions; recorded in the plan."""
        from .candidates import choose_view, standard_error

        train, val, test = parts
        last = self.spec_.stages[-1].name
        y_train, y_val = self._labels(train), self._labels(val)
        chosen, table, reason, _, fitted = choose_view(
            features, train, val, y_train, y_val, last, self.seed, console
        )
        warm, C = self._logreg_warm(features, chosen, parts, console, fitted)
        plan.candidates = table
        self._set_view(plan, chosen)
        plan.reasons = [r for r in plan.reasons if not r.startswith("cut point:")]
        plan.reasons.append(f"warm start: {reason}")
        plan.warm_start = {"view": chosen.name, "val_acc": warm.val_acc, "C": C}
        low = warm.val_acc - 1.96 * standard_error(warm.val_acc, len(val))
        plan.expected_accuracy = {
            "low": round(max(0.0, low), 4),
            "high": 1.0,
            "probe_accuracy": round(warm.val_acc, 4),
            "basis": f"the frozen choice's validation accuracy on {len(val)} images (95% "
            "interval below it): fine-tuning starts from it and replaces it only when it "
            "validates better",
        }
        return warm

    def _logreg_warm(self, features: FeatureCache, view, parts, console, fitted=None):
        """(WarmStart, C): the logistic regression on `view`'s cached rows, fitted on train,
        C chosen on validation (or `fitted`, that head already fitted by the view choice),
        with its validation and test predictions."""
        from .logreg import fit_logreg
        from .lpft import WarmStart

        train, val, test = parts
        rows = features.rows(train + val + test, view.name)
        n_tr, n_va = len(train), len(val)
        fit = fitted
        if fit is None:
            fit = fit_logreg(
                rows.subset(np.arange(n_tr)),
                self._labels(train),
                rows.subset(np.arange(n_tr, n_tr + n_va)),
                self._labels(val),
                len(self.classes_),
                console=console,
            )
        with torch.no_grad():
            pred = fit.head(rows.dequantize()).argmax(1).numpy()
        warm = WarmStart(
            fit.head.eval(),
            view.name,
            view.stage_index,
            view.grid,
            fit.val_acc,
            pred[n_tr : n_tr + n_va],
            pred[n_tr + n_va :],
            view.parts,
        )
        return warm, fit.C

    def _tuning_input(self, plan: Plan, train):
        """The preprocessing of fine-tuning on images (`input_size`): smaller than the
        backbone's own for images far smaller than it. Frozen heads stay at the backbone's
        own, where their features measured better (docs/finetuning.md)."""
        from .imagedata import choose_input

        own = self.spec_.preprocessing
        prep, reason = choose_input(own, self.input_size, [s.path for s in train], self.seed)
        if reason:
            plan.reasons.append(
                f"fine-tuning {reason}; the frozen choice stays at {own.crop_size}x"
                f"{own.crop_size}, where frozen features measured better"
            )
        return prep

    def _rewarm(self, net, parts, console):
        """prep -> the warm start refitted on features at input `prep` (the frozen choice's
        view, embedded at that size for train and validation), or None when the view has no
        equal at that size (its grid is larger than the stage's map there)."""
        train, val, _ = parts

        def rewarm(prep, view_name: str):
            found = self._rewarm_cache(net, prep, view_name, console)
            if found is None:
                return None
            cache, view = found
            return self._logreg_warm(cache, view, (train, val, []), console)[0]

        return rewarm

    def _rewarm_cache(self, net, prep, view_name: str, console):
        """(feature cache, view) of the frozen choice's view embedded at input `prep` (a
        joined view: its members), or None when the view has no equal at that size."""
        from .candidates import JOINER, frozen_views, view_named

        spec = dataclasses.replace(self.spec_, preprocessing=prep)
        views = {v.name: v for v in frozen_views(spec)}
        view = view_named(view_name, views)
        if view is None:
            return None
        members = [views[name] for name in view_name.split(JOINER)]
        return self._features(spec, net, console, views=members), view

    def _set_view(self, plan: Plan, view) -> None:
        """The frozen head's input into the plan: the stage the backbone runs to, the grid,
        the cache key, and a joined view's members."""
        plan.cut, plan.grid, plan.view = view.stage, view.grid, view.name
        plan.parts = [[self.spec_.stages[i].name, g] for i, g in view.parts]

    def _parts(self) -> tuple[tuple[int, int], ...]:
        """The plan's joined-view members as (stage index, grid) pairs; () for one stage."""
        return tuple((self.spec_.stage_index(n), int(g)) for n, g in self.plan_.parts)

    def _warm_metrics(self, warm, val, test) -> dict:
        """The frozen choice the fine-tuning started from, scored like the kept model (so a
        reader sees what fine-tuning added, on validation and on test)."""
        out = {"view": warm.view, "validation_accuracy": round(warm.val_acc, 4)}
        if test:
            y = self._labels(test)
            out["test_accuracy"] = round(float(np.mean(warm.test_pred == y)), 4)
        out["kept"] = self.plan_.outcome
        return out

    def _deadline(self, plan: Plan, t0: float) -> float:
        """time.monotonic() by which fine-tuning ends: the budget from the start of the fit,
        less a reserve for the evaluation, export and report."""
        from .lpft import DEFAULT_TIME_BUDGET

        budget = self.time_budget if self.time_budget is not None else DEFAULT_TIME_BUDGET
        given = "--time-budget" if self.time_budget is not None else "default; --time-budget"
        spent = time.perf_counter() - t0
        reserve = min(60.0, 0.05 * budget)
        plan.time_budget = {"seconds": budget, "spent_before_training": round(spent, 1)}
        plan.reasons.append(
            f"time budget: {budget:.0f}s ({given} to change); {spent:.0f}s spent on analysis "
            f"and the frozen choice, {reserve:.0f}s kept for evaluation and export"
        )
        return time.monotonic() + budget - spent - reserve

    def _estimates(
        self, plan, net, features, warm, analysis, parts, deadline, tuning
    ) -> list[dict]:
        """Measured wall-time estimates of the fine-tuning candidates, before any runs."""
        from .lpft import describe, estimate_candidates

        train, val, test = parts
        everything = train + val + test
        console = features.console
        # the frozen graph's speed as this run measured it, or as the last run that embedded
        # into this cache did (a warm run embeds nothing); torch eager's when neither did,
        # which is slower: the estimate errs long
        rate = features.embed_rate() or analysis.images_per_second

        def missing(after: int) -> int:
            return len(self._map_cache(net, after, console)._missing(everything))

        def rewarm_missing() -> int:  # train + validation images not yet embedded at `tuning`
            found = self._rewarm_cache(net, tuning, warm.view, console)
            return len(found[0]._missing(train + val)) if found else len(train) + len(val)

        estimates = estimate_candidates(
            self.spec_,
            net,
            warm,
            len(train),
            len(val),
            len(everything),
            rate,
            deadline - time.monotonic(),
            self.cache_dtype,
            epochs=self.finetune_epochs,
            full_epochs=self.finetune_epochs,
            scratch=plan.case == 4,
            console=console,
            maps_missing=missing,
            full_preprocessing=tuning,
            rewarm_missing=rewarm_missing,
        )
        plan.estimates = estimates
        plan.reasons.extend(describe(estimates))
        return estimates

    def _map_cache(self, net, after: int, console) -> FeatureCache:
        """The feature cache of stage `after`'s whole maps (automl_tl.partial)."""
        from .partial import map_view

        return self._features(self.spec_, net, console, views=[map_view(self.spec_, after)])

    def _map_rows(self, net, parts, console):
        """after -> stored maps of stage `after` for (train, val, test), cached by content."""
        from .partial import map_view

        train, val, test = parts

        def rows(after: int):
            view = map_view(self.spec_, after)
            maps = self._map_cache(net, after, console)
            maps.ensure(train + val + test)
            got = [maps.rows(part, view.name) if part else None for part in (train, val, test)]
            self.cache_stats_maps_ = maps.stats.to_dict()
            return tuple(got)

        return rows

    def _fit_images(self, strategy, parts, run, console, context):
        """Fine-tuning strategies: images in (and cached maps), checkpoints in the run
        folder, warm-started from the frozen choice."""
        from .finetune import FinetuneConfig

        net, features, warm, estimates, deadline, tuning = context
        train, val, test = parts
        if not self.resume and run.file("checkpoints").is_dir():
            console.note(
                f"'{run.path}' holds the checkpoints of an interrupted run; fine-tuning from "
                "the start (add --resume to continue it)"
            )
        if self.finetune not in ("auto", "partial", "full"):
            raise AutoTLError(
                f"finetune={self.finetune!r} is not a mode; use auto, partial or full"
            )
        task = ImageTask(
            backbone=self.spec_,
            train_items=[(s.path, i) for s, i in zip(train, self._labels(train), strict=True)],
            val_items=[(s.path, i) for s, i in zip(val, self._labels(val), strict=True)],
            n_classes=len(self.classes_),
            cut=self.plan_.cut,
            config=FinetuneConfig(epochs=self.finetune_epochs, seed=self.seed),
            checkpoint_dir=run.file("checkpoints"),
            resume=self.resume,
            console=console,
            weights=self.weights,
            allow_download=self.allow_download,
            time_budget=self.time_budget,
            net=net,
            warm_start=warm,
            estimates=estimates,
            map_rows=self._map_rows(net, parts, console),
            deadline=deadline,
            mode=self.finetune,
            seed=self.seed,
            input_preprocessing=tuning,
            rewarm=self._rewarm(net, parts, console),
        )
        result = strategy.fit(task)
        prep = getattr(result, "preprocessing", None)
        if prep is not None and prep != self.spec_.preprocessing:
            # the kept model was trained at the smaller input: it is evaluated and exported so
            self.spec_ = dataclasses.replace(self.spec_, preprocessing=prep)
            self.plan_.input_size = prep.crop_size
        for note in getattr(result, "notes", []):
            console.note(f"train: {note}")
        self.model_ = result.model.eval()
        kept = getattr(result, "kept", None)
        if kept is not None:
            self.plan_.outcome = kept
        known = getattr(result, "predictions", None)
        if known is not None and known[0] is not None and (known[1] is not None or not test):
            return result, (None, np.asarray(known[0]), np.asarray(known[1]))
        return result, (None, self._predict_samples(val), self._predict_samples(test))

    def _predict_samples(self, samples) -> np.ndarray:
        if not samples:
            return np.zeros(0, dtype=np.int64)
        return self.predict_proba([s.path for s in samples]).argmax(1)

    def _head_config(self) -> HeadConfig:
        return HeadConfig(
            epochs=self.epochs,
            patience=self.patience,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
        )

    def _thresholds(self) -> Thresholds:
        overrides = {"size_ratio": self.size_ratio, "similarity_pvalue": self.similarity_pvalue}
        return Thresholds(**{k: v for k, v in overrides.items() if v is not None})

    def _analyse(self, spec, net, train, val, test, console, features) -> Analysis:
        bank = SourceBank.load(self.source_bank) if self.source_bank else None
        if bank is not None and bank.backbone != spec.name:
            raise AutoTLError(
                f"source bank '{self.source_bank}' was built for backbone {bank.backbone}, "
                f"not {spec.name}; build one with --backbone {spec.name}"
            )
        return analyse(
            spec,
            net,
            train,
            val,
            test,
            self.classes_,
            bank,
            self._thresholds(),
            self.max_analysis_images,
            self.seed,
            console,
            features,
        )

    def _plan(self, analysis: Analysis, spec, plugins) -> Plan:
        profile = analysis.profile
        # Fine-tuning costs about 3 forward passes (forward + backward) per image and epoch.
        # No demotion on a coarse guess here: the fine-tuning strategies measure what each
        # candidate costs on this machine and keep the frozen choice when nothing fits.
        plan = make_plan(profile, spec, self._head_config(), plugins, self.case, self.strategy)
        plan.input_size = spec.preprocessing.crop_size
        return plan

    def _metrics(self, result, preds, parts, seconds) -> dict:
        train, val, test = parts
        pred_train, pred_val, pred_test = preds
        metrics = {
            "validation": classification_metrics(self._labels(val), pred_val, self.classes_),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "history": result.history,
            "notes": list(getattr(result, "notes", [])),
            "fit_seconds": round(seconds, 2),
        }
        if pred_train is not None:
            metrics["train_accuracy"] = float((pred_train == self._labels(train)).mean())
        if test:
            metrics["test"] = classification_metrics(self._labels(test), pred_test, self.classes_)
        band = self.plan_.expected_accuracy
        if band:
            acc = metrics["validation"]["accuracy"]
            metrics["expected_accuracy"] = {
                **band,
                "achieved": acc,
                "within": band["low"] <= acc <= band["high"],
            }
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
            "grid": self.plan_.grid,
            "view": self.plan_.view or self.plan_.cut,
        }

    def _export(
        self,
        path: Path,
        check_paths: list[Path],
        composed: Path | None,
        stored=None,
        output: str | None = None,
        console: Console | None = None,
    ) -> dict:
        """Write model.onnx (joined to the embedding graph's `output` when there is one, else
        traced) and check it against the torch model on real held-out images.

        A joined model is remembered by content beside the embedding graph: a warm re-fit
        that ends with the same head publishes the remembered file (sha256-verified) instead
        of composing it again, and the same check runs on it; one that fails the check is
        forgotten and composed afresh. The model's metadata holds no time for that reason;
        when it was made goes to metrics.json."""
        self.metrics_["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        prep = self.spec_.preprocessing
        batch = next(iter_batches(check_paths, prep, len(check_paths)))

        def check() -> dict:
            return check_parity(self.model_, path, batch, stage_output=output, reference=stored)

        if composed is None:
            self.export_onnx(path)
            return check()
        from .runtime import _read_sidecar

        record = _read_sidecar(composed)  # features.onnx_path() verified it just now
        graph_sha = record["sha256"] if record else file_sha256(composed)
        meta = self._metadata()
        key = composed_key(graph_sha, output, self.model_.head, meta)
        if reuse_composed(composed, key, path):
            try:
                return {**check(), "reused_composition": True}
            except ExportError:  # not the model of this key after all: replaced below
                forget_composed(composed, key)
        cut = self.spec_.stage_index(self.plan_.cut)
        width = self.spec_.stages[cut].width * self.plan_.grid**2
        compose_onnx(composed, output, self.model_.head, width, path, meta)
        result = {**check(), "reused_composition": False}
        remember_composed(composed, key, path, console)  # only a model that passed
        return result

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
            for batch in iter_batches(files, prep, self.batch_size or 32):
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
        return export_onnx(self.model_, path, self.spec_.preprocessing.crop_size, self._metadata())

    def _metadata(self) -> dict:
        return {
            "classes": self.classes_,
            "preprocessing": self.spec_.preprocessing.to_dict(),
            "provenance": self._provenance(),
        }

"""A fit, as steps read top to bottom:

    read the data (scan, audit, split) -> load the backbone -> embed (feature cache)
    -> analyse (size, similarity) -> plan -> choose the frozen view
    -> fine-tune if it earns its cost, else fit the frozen head -> evaluate
    -> calibrate, the OOD reference -> export and check -> int8 where it pays
    -> write the run folder

Each step is a function of the rooms below (data, features, decide, train, export, report)
that takes and returns plain values; the plan is never changed in place, each step returns the
plan it leaves. `fit` and `analyze` share their first steps. AutoTransfer (automl_tl.estimator)
is a thin shell over these two functions; the CLI prints what they return.

Under torchrun every rank runs every step (the collective ones, embedding and fine-tuning,
split the work); rank 0 alone exports and writes the run folder.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .core.console import Console
from .core.distributed import barrier, init_distributed
from .core.errors import AutoTLError, Interrupted
from .core.files import default_cache_dir
from .core.tasks import HeadConfig
from .data.dataset import Dataset, read_data
from .data.input_size import choose_input
from .decide.analysis import Analysis, analyse
from .decide.backbones import Candidate, backbones_for, search, without_search
from .decide.banks import load_bank
from .decide.frozen import choose_frozen, searches_views, with_frozen_choice, with_warm_start
from .decide.label_issues import issues_of, label_issues_record, without_issues
from .decide.pair import choose_again, without_pair
from .decide.planner import Plan, make_plan, thresholds
from .export.int8_step import int8_step
from .export.publish import export_model, metadata
from .export.trust import assess
from .features import ops
from .features.cache import FeatureCache
from .features.memo import Memo
from .features.paired import PairedFeatures
from .plugins import get_plugins
from .report.metrics import fit_metrics
from .report.run_folder import RunFolder, default_run_dir
from .report.summary import AnalysisSummary, FitSummary
from .report.write import write_run
from .settings import Settings
from .train.estimates import budget, describe, measure_candidates
from .train.run import Trained, fine_tune, fit_frozen, kept_spec
from .train.warm import fit_warm_start, rewarm_at

__all__ = ["fit", "analyze", "FitResult", "AnalysisResult"]

RUNS = "runs"  # where run folders go when --out is not given


@dataclass(frozen=True)
class Session:
    """What every step of one fit shares: its settings, where it talks, the plugins, the cache
    folder and the cache's memo, and this process's rank under torchrun."""

    settings: Settings
    console: Console
    plugins: object
    cache_root: Path
    memo: Memo
    rank: int = 0


@dataclass(frozen=True)
class Prepared:
    """The first steps' results, shared by fit and analyze."""

    data: Dataset
    spec: object  # the BackboneSpec
    net: object  # its built network
    features: FeatureCache
    backbones: list  # every backbone the fit may use, cheapest first (spec is the first)


@dataclass(frozen=True)
class AnalysisResult:
    data: Dataset
    spec: object
    analysis: Analysis
    plan: Plan

    def summary(self) -> AnalysisSummary:
        return AnalysisSummary(self.plan.to_dict())


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    model_path: Path
    report_path: Path | None
    data: Dataset
    spec: object  # the backbone at the input the kept model takes
    analysis: Analysis
    plan: Plan
    trained: Trained
    metrics: dict
    export_check: dict
    cache_stats: dict

    def summary(self) -> FitSummary:
        return FitSummary.of(self)


# What Ctrl-C during each step interrupted, what of it is kept, and how to continue.
_INTERRUPTED = {
    "audit": "the verdicts of the files checked so far are remembered; run the same command again",
    "embed": "the features computed so far are in the feature cache; the same command "
    "continues from there",
    "fine-tune": "the last finished epoch is checkpointed; repeat the command with the same "
    "--out and add --resume to continue from it",
}


@contextlib.contextmanager
def _step(name: str):
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        then = _INTERRUPTED.get(
            name, "nothing half-written is kept; run the same command again (cached "
            "features are reused)"
        )  # fmt: skip
        raise Interrupted(f"interrupted during {name}: {then}") from None


def _session(settings: Settings, rank: int = 0) -> Session:
    quiet = settings.quiet or rank != 0
    console = Console(quiet) if rank == 0 else Console(True, io.StringIO())
    root = Path(settings.cache_dir) if settings.cache_dir is not None else default_cache_dir()
    return Session(settings, console, get_plugins(), root, Memo(root, console), rank)


def _open(spec, s: Session) -> Candidate:
    """A backbone built and its feature cache opened."""
    st = s.settings
    net = spec.build(st.weights, allow_download=st.allow_download)
    features = FeatureCache(
        spec, net, s.cache_root, st.cache_dtype, st.engine, st.batch_size, s.console
    )  # fmt: skip
    return Candidate(spec, net, features)


def _prepare(source, s: Session, exclude: tuple[Path, ...] = ()) -> Prepared:
    """Read the data, load the (first) backbone, open its feature cache."""
    st = s.settings
    with _step("audit"):
        data = read_data(
            source, st.val_fraction, st.seed, s.console, st.strict, s.memo, exclude
        )  # fmt: skip
    specs = backbones_for(st.backbone, s.plugins, st.source_bank)
    c = _open(specs[0], s)
    return Prepared(data, c.spec, c.net, c.features, specs)


def _analyse(p: Prepared, s: Session) -> tuple[Analysis, Plan]:
    """Profile the data (size, similarity, stage probes) and plan from the profile."""
    st = s.settings
    bank = load_bank(st.source_bank, p.spec) if st.source_bank else None
    with _step("analysis"):
        analysis = analyse(
            p.spec, p.net, p.data.train, p.data.val, p.data.test, p.data.classes, bank,
            thresholds(st.size_ratio, st.similarity_pvalue), st.max_analysis_images, st.seed,
            s.console, p.features,
        )  # fmt: skip
    plan = make_plan(
        analysis.profile, p.spec, head_config(st), s.plugins, st.case, st.strategy
    )  # fmt: skip
    return analysis, plan


def head_config(st: Settings) -> HeadConfig:
    return HeadConfig(st.epochs, st.patience, st.lr, st.weight_decay, seed=st.seed)


def analyze(source, settings: Settings) -> AnalysisResult:
    """Scan, audit, split, analyse and plan, without training."""
    s = _session(settings.checked())
    p = _prepare(source, s)
    analysis, plan = _analyse(p, s)
    plan = without_search(plan, p.spec, p.backbones, "an analysis compares no frozen choices")
    return AnalysisResult(p.data, p.spec, analysis, plan)


def fit(source, settings: Settings) -> FitResult:
    """The whole fit into a run folder, which is held for the fit's duration; a finished run
    in it is kept unless `overwrite` (replaced when the new one has finished) or `resume`."""
    started = time.perf_counter()
    settings = settings.checked()
    rank, size = init_distributed()  # (0, 1) unless launched by torchrun
    if size > 1 and settings.out is None:
        raise AutoTLError("under torchrun pass --out DIR so every process uses one run folder")
    if settings.out is None:
        new_base = not Path(RUNS).exists()
        folder = RunFolder(default_run_dir(source, RUNS), created=True, parent_created=new_base)
    else:
        folder = RunFolder(settings.out)
    # Under torchrun the ranks share rank 0's folder: rank 0 alone holds the lock.
    s = _session(settings, rank)
    with folder.claim(settings.overwrite, settings.resume, lock=rank == 0) as run:
        result = _fit(source, s, run, (folder.path, run.path), started)
    report = folder.file("report.html") if result.report_path else None
    if report:
        s.console.note(f"report: {report}")
    return replace(
        result, run_dir=folder.path, model_path=folder.file("model.onnx"), report_path=report
    )


def _fit(source, s: Session, run: RunFolder, exclude, started: float) -> FitResult:
    st, console = s.settings, s.console
    p = _prepare(source, s, exclude)
    data, spec, features = p.data, p.spec, p.features
    with _step("embed"):
        features.ensure(data.everything)  # collective: every rank embeds its share
    features.release()  # the embedding session, until rows are missing again
    analysis, plan = _analyse(p, s)
    strategy = s.plugins.strategy(plan.strategy)
    fitted = warm = choice = issues = None
    searched = strategy.kind == "images" or searches_views(plan, st.strategy, st.case)
    if not searched:  # --case 1 or --strategy: no frozen choice to compare backbones by
        why = "--case 1 and --strategy skip the frozen choice"
        plan = without_search(plan, spec, p.backbones, why)
    else:
        include_default = strategy.kind == "images" or st.case != 2
        if len(p.backbones) > 1:  # --backbone auto: the frozen choice on each, then across
            frozen = strategy.kind != "images"  # a second backbone beside is a frozen model
            with _step("the backbone search"):
                p, choice, why, changes = _search(p, s, include_default, frozen, started)
            if p.features is not features:  # the winner's (or the pair's) test rows too
                p.features.ensure(data.everything)
                p.features.release()  # the embedding session, until rows are missing again
            if p.spec is not spec:  # the winner's own profile and plan
                analysis, plan = _analyse(p, s)
                strategy = s.plugins.strategy(plan.strategy)
            spec, features = p.spec, p.features  # a pair's features when it won
            if strategy.kind == "images" and changes["paired"]:  # fine-tuning takes one
                features, choice, why, changes = without_pair(
                    features, data, st.seed, console, include_default, why, changes
                )  # fmt: skip
                p = replace(p, features=features)
            plan = plan.adding(why, **changes)
        else:
            with _step("the frozen choice"):
                choice = choose_frozen(features, data, st.seed, console, include_default)
        with _step("label issues"):  # the frozen head's out-of-fold view of every label
            issues = issues_of(features, data, choice, st.seed, console)
        if st.drop_label_issues and issues[0]:
            data, dropped = without_issues(data, issues[0], choice, features)
            p = replace(p, data=data)
            plan = plan.adding(dropped["reason"])
            issues = (*issues, dropped)
            with _step("the frozen choice"):
                choice = choose_again(features, data, st.seed, console, include_default)
    if strategy.kind == "images":
        with _step("the frozen choice"):
            warm, C = fit_warm_start(features, choice.view, data, console, choice.fit)
        plan = with_warm_start(plan, choice, warm.val_acc, C, spec, len(data.val))
        plan, context = _fine_tune_plan(plan, p, s, warm, analysis, started)
    elif searched:
        plan = with_frozen_choice(plan, choice, spec, len(data.val))
        fitted = choice.fit
        strategy = s.plugins.strategy(plan.strategy)
    for reason in plan.reasons:
        console.note(f"plan: {reason}")
    if strategy.kind == "images":
        with _step("fine-tune"):
            trained = fine_tune(
                strategy, st, p.net, features, plan, data, context, run.file("checkpoints")
            )  # fmt: skip
        plan = _after_fine_tuning(plan, trained)
    else:
        with _step("head training"):
            trained = fit_frozen(strategy, features, plan, data, head_config(st),
                                 console, fitted)  # fmt: skip
    barrier()  # every rank has trained: rank 0 may now export and remove the checkpoints
    kept = kept_spec(spec, trained)
    cache_stats = {**features.stats.to_dict(), "backend": ops.backend()}
    metrics = fit_metrics(
        trained, data, plan, time.perf_counter() - started, cache_stats, warm
    )  # fmt: skip
    if issues is not None:
        metrics["label_issues"] = label_issues_record(issues, metrics)
    result = FitResult(run.path, run.file("model.onnx"), None, data, kept, analysis, plan,
                       trained, metrics, {}, cache_stats)  # fmt: skip
    if s.rank != 0:  # under torchrun, rank 0 alone exports and writes the run folder
        return result
    with _step("calibration and the OOD reference"):
        trust = _assess(trained, plan, kept, p, strategy, s)
    trained.model.outputs = trust.outputs  # folded into the exported graph
    for line in trust.record["shift"]:
        console.warn(f"shift: {line}")
    with _step("export"):
        check = _export(trained, plan, kept, p, strategy, result.model_path, s, trust)
    metrics = {**metrics, **trust.record, "export_check": check}
    if st.int8:
        with _step("int8"):
            threshold = trust.record["ood"]["threshold"]
            metrics["int8"] = int8_step(result.model_path, data, kept.preprocessing,
                                        s.cache_root, st.seed, console, threshold)  # fmt: skip
    with _step("writing the run folder"):
        report = write_run(run, source, data, plan, metrics, trained.predictions[1],
                           issues[0] if issues else None)  # fmt: skip
    run.remove_checkpoints()  # the run finished: nothing will resume them
    return replace(result, report_path=report, metrics=metrics, export_check=check)


def _search(p: Prepared, s: Session, include_default: bool, pair: bool, started):
    """The backbone search (decide.backbones): the winner's Prepared and frozen choice, and
    the plan's changes (the reason, every backbone tried, a second backbone beside)."""
    left = budget(s.settings.time_budget, started)
    won, tried, reason = search(
        p.backbones, Candidate(p.spec, p.net, p.features), lambda spec: _open(spec, s),
        p.data, s.settings.seed, s.console, left.deadline, include_default, pair,
    )  # fmt: skip
    p = replace(p, spec=won.spec, net=won.net, features=won.features)
    paired = won.features.record() if isinstance(won.features, PairedFeatures) else {}
    return p, won.choice, reason, {"backbones": [t.to_dict() for t in tried], "paired": paired}


def _fine_tune_plan(plan: Plan, p: Prepared, s: Session, warm, analysis, started: float):
    """Cases 3/4 before training: the input of full fine-tuning, the budget left, and every
    candidate's measured estimate. Returns the plan and what fine-tuning is handed."""
    st, own = s.settings, p.spec.preprocessing
    tuning, why = choose_input(own, st.input_size, [x.path for x in p.data.train], st.seed)
    if why:
        plan = plan.adding(
            f"fine-tuning {why}; the frozen choice stays at {own.crop_size}x{own.crop_size}, "
            "where frozen features measured better"
        )
    left = budget(st.time_budget, started)
    plan = plan.adding(left.reason(), time_budget=left.record())
    # the frozen graph's speed as this run measured it, or as the last run that embedded
    # into this cache did (a warm run embeds nothing); torch eager's when neither did, which
    # is slower: the estimate errs long
    rate = p.features.embed_rate() or analysis.images_per_second
    with _step("the estimates"):
        estimates = measure_candidates(
            p.features, warm, p.data, rate, left.deadline, st, tuning, plan.case == 4
        )  # fmt: skip
    plan = plan.adding(*describe(estimates), estimates=estimates)
    context = {
        "warm": warm,
        "estimates": estimates,
        "deadline": left.deadline,
        "tuning": tuning,
        "rewarm": rewarm_at(p.features, p.data, s.console),
    }
    return plan, context


def _after_fine_tuning(plan: Plan, trained: Trained) -> Plan:
    """The plan with which candidate ran and which model was kept, at what input."""
    estimates = [{**e, "ran": True} if e["candidate"] == trained.ran else e for e in plan.estimates]
    changes = {"estimates": estimates, "input_size": trained.preprocessing.crop_size}
    if trained.kept:
        changes["outcome"] = trained.kept
    return plan.adding(**changes)


def _assess(trained: Trained, plan: Plan, kept, p: Prepared, strategy, s: Session):
    """Calibration, the OOD reference and the shift lines: from cached rows when the
    backbone stayed frozen, else from the trained model on decoded images."""
    rows_of = None
    if strategy.kind != "images":
        view = plan.view or plan.cut
        rows_of = lambda samples: p.features.rows(samples, view).dequantize().numpy()  # noqa: E731
    return assess(trained.model, p.data, kept.preprocessing, rows_of, s.settings.seed, s.console)


def _export(trained: Trained, plan: Plan, kept, p: Prepared, strategy, path: Path, s: Session,
            trust):  # fmt: skip
    """model.onnx: the embedding graph joined to a frozen head (a joined view is traced),
    else the whole model traced; checked on up to 16 validation images."""
    features, data = p.features, p.data
    composed = features.onnx_path() if strategy.kind != "images" and not plan.parts else None
    view = plan.view or plan.cut
    check = data.val[:16]
    stored, output, width = None, None, None
    if composed:
        stored = features.rows(check, view).dequantize().numpy()
        output = f"stage{features.view_names.index(view)}"
        width = kept.stages[kept.stage_index(plan.cut)].width * plan.grid**2
    meta = metadata(data.classes, kept, s.settings.weights, plan, trust.record)
    return export_model(
        trained.model, path, meta, kept.preprocessing.crop_size, [x.path for x in check],
        composed, output, stored, width, s.console,
    )  # fmt: skip

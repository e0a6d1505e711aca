"""DatasetProfile -> Plan: which case, which cut point, which hyper-parameters, and why.

Verdicts and their thresholds (each can be overridden, see `Thresholds`):

- size: *large* when the training set has at least as many images as the new linear
  head has parameters (feature width x classes, `size_ratio` = 1). Below that even the
  head is under-determined by the data, so adapting millions of backbone weights would
  overfit: *small*.
- similarity: *similar* when (the median conformal p-value of the target images against
  the source bank is at least 0.5 (`similarity_pvalue`), the value expected when the
  target is distributed like the bank's own vectors, OR the median BatchNorm drift over
  the stages is at most 0.125, the KL divergence of a half-standard-deviation shift;
  fixed, `similarity.DRIFT_THRESHOLD`) AND the last stage's k-NN probe is within one
  standard error of the best stage's. The p-value alone calls in-domain photos whose
  classes group many source classes 'different'; similarity.py and docs/analysis.md
  say why, with the measurements.
- cut point (case 2): the earliest stage whose k-NN probe accuracy is within one
  standard error of the best stage's (the one-standard-error rule): the least
  source-specific features that still do as well as any.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from ..core.contract import BackboneSpec
from ..core.errors import AutoTLError
from ..core.tasks import HeadConfig
from .profile import DatasetProfile, Thresholds

__all__ = [
    "Plan",
    "make_plan",
    "CASES",
    "IMPLEMENTED",
    "thresholds",
]

CASES = {
    1: "small + similar: freeze the backbone, train a new fully connected head",
    2: "small + different: cut the backbone early, train a head on low-level features",
    3: "large + similar: fine-tune everything from pretrained weights with a new head",
    4: "large + different: fine-tune, or retrain from scratch when that validates better",
}
IMPLEMENTED = (1, 2, 3, 4)
_CASE_OF = {
    ("small", "similar"): 1,
    ("small", "different"): 2,
    ("large", "similar"): 3,
    ("large", "different"): 4,
}
_DEMOTE = {3: 1, 4: 2}


@dataclass(frozen=True)
class Plan:
    """The decision and everything needed to audit it."""

    case: int
    strategy: str
    backbone: str
    cut: str
    head: dict
    reasons: list[str] = field(default_factory=list)
    profile: dict = field(default_factory=dict)
    expected_accuracy: dict = field(default_factory=dict)
    # The frozen head's input: `cut` pooled to grid x grid (`view` is its feature-cache key; grid
    # 0 when it is a joined view),
    # and every candidate view measured on the validation split (automl_tl.decide.candidates).
    grid: int = 1
    view: str = ""
    # A joined view (several stages side by side): its members' [stage, grid] pairs.
    parts: list = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    # Fine-tuning cases: the frozen choice they start from, the budget, each candidate's
    # measured estimate (automl_tl.train.tune) and which candidate the kept model is.
    warm_start: dict = field(default_factory=dict)
    time_budget: dict = field(default_factory=dict)
    estimates: list[dict] = field(default_factory=list)
    outcome: str = ""
    # The input crop of the kept model, evaluated and exported at it: the backbone's own,
    # unless fine-tuning at a smaller input (data.input_size.choose_input) was kept.
    input_size: int = 0
    # --backbone auto: every backbone tried (decide.backbones.Tried), cheapest first.
    backbones: list[dict] = field(default_factory=list)
    # A second backbone beside `backbone` at its input (features.paired): its name, view,
    # input and normalisation; empty when one backbone makes the features.
    paired: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["case_description"] = CASES[self.case]
        return d

    def adding(self, *reasons: str, **changes) -> Plan:
        """A copy with `reasons` appended and `changes` made (a plan is never changed in
        place: each step of a fit returns the plan it leaves)."""
        return dataclasses.replace(self, reasons=[*self.reasons, *reasons], **changes)


def _choose_cut(profile: DatasetProfile, backbone: BackboneSpec) -> tuple[str, str]:
    """(stage name, reason) by the one-standard-error rule over the stage probes."""
    probes, n = profile.probes, max(profile.probe_n, 1)
    best_name = max(probes, key=probes.get)
    best = probes[best_name]
    se = math.sqrt(max(best * (1 - best), 1e-12) / n)
    for stage in backbone.stages:
        if stage.name in probes and probes[stage.name] >= best - se:
            table = ", ".join(f"{k} {v:.3f}" for k, v in probes.items())
            return stage.name, (
                f"cut point: '{stage.name}' ({stage.width} features), the earliest stage within "
                f"one standard error ({se:.3f}) of the best k-NN probe ({best_name} {best:.3f}); "
                f"probes: {table}"
            )
    return best_name, f"cut point: '{best_name}', best k-NN probe"


def _expected(profile: DatasetProfile, cut: str, case: int) -> dict:
    acc = profile.probes.get(cut)
    if acc is None:
        return {}
    half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / max(profile.probe_n, 1))
    low, high = max(0.0, acc - half), min(1.0, acc + half)
    if case in (3, 4):  # fine-tuning should do at least as well as the frozen features
        high = 1.0
    basis = f"95% interval of the leave-one-out k-NN probe on '{cut}' features"
    return {
        "low": round(low, 4),
        "high": round(high, 4),
        "probe_accuracy": round(acc, 4),
        "basis": basis,
    }


def _pick_strategy(plugins, profile, case: int, strategy: str | None, why_case: str, forced: bool):
    """(StrategySpec, reason): --strategy wins, then --case, then a select_strategy hook,
    then the planner's case."""
    if strategy:
        return plugins.strategy(strategy), f"strategy '{strategy}' requested by the user"
    picked = None if forced else plugins.select_strategy(profile)
    if picked:
        plugin, name = picked
        return plugins.strategy(name), f"plugin {plugin} selected strategy '{name}'"
    for spec in plugins.strategies.values():
        if spec.case == case:
            return spec, f"{why_case}; strategy '{spec.name}'"
    raise AutoTLError(f"no strategy implements case {case}; `automl-tl strategies` lists them")


def _case(profile, case, time_budget, finetune_seconds) -> tuple[int, list[str]]:
    if case is not None:
        if case not in CASES:
            raise AutoTLError(f"--case {case} is not a case; use 1, 2, 3 or 4")
        return case, [f"case {case} requested by the user (--case)"]
    auto = _CASE_OF[profile.size, profile.similar]
    reasons = [f"case {auto}: {CASES[auto]}"]
    if auto not in IMPLEMENTED and auto in _DEMOTE:
        reasons.append(f"case {auto} is not available in this version: case {_DEMOTE[auto]}")
        auto = _DEMOTE[auto]
    if auto in _DEMOTE and time_budget and finetune_seconds and finetune_seconds > time_budget:
        reasons.append(
            f"time budget {time_budget:.0f}s < estimated fine-tuning time "
            f"{finetune_seconds:.0f}s: demoted to case {_DEMOTE[auto]}"
        )
        auto = _DEMOTE[auto]
    return auto, reasons


def make_plan(
    profile: DatasetProfile,
    backbone: BackboneSpec,
    head: HeadConfig,
    plugins,
    case: int | None = None,
    strategy: str | None = None,
    time_budget: float | None = None,
    finetune_seconds: float | None = None,
) -> Plan:
    """Choose case, strategy and cut point; every decision comes with its reason."""
    if case is not None and case in CASES and case not in IMPLEMENTED:
        raise AutoTLError(
            f"--case {case} ({CASES[case]}) is not available in this version; "
            f"use one of {', '.join(map(str, IMPLEMENTED))}"
        )
    chosen, case_reasons = _case(profile, case, time_budget, finetune_seconds)
    spec, why = _pick_strategy(
        plugins, profile, chosen, strategy, case_reasons[-1], forced=case is not None
    )
    chosen = spec.case or chosen
    reasons = [
        f"data: {profile.images} usable images in {profile.classes} classes "
        f"(train {profile.train_images}, validation {profile.val_images}, "
        f"test {profile.test_images}); largest/smallest class = {profile.imbalance:.2f}",
        f"backbone: {backbone.name} pretrained on {backbone.source_domain}",
        *profile.verdict_reasons,
        *case_reasons[:-1],
        why,
    ]
    if profile.imbalance > 1.5:
        reasons.append("classes are imbalanced: the loss weights classes inversely to size")
    if chosen == 2 and profile.probes:
        cut, cut_reason = _choose_cut(profile, backbone)
    else:
        last = backbone.stages[-1]
        cut, cut_reason = last.name, f"cut point: last stage '{last.name}' ({last.width} features)"
    reasons.append(cut_reason)
    return Plan(
        chosen,
        spec.name,
        backbone.name,
        cut,
        head.to_dict(),
        reasons,
        asdict(profile),
        _expected(profile, cut, chosen),
        input_size=backbone.preprocessing.crop_size,
    )


def thresholds(size_ratio: float | None = None, similarity_pvalue: float | None = None):
    """The planner's thresholds with the user's overrides (None keeps a default)."""
    given = {"size_ratio": size_ratio, "similarity_pvalue": similarity_pvalue}
    return Thresholds(**{k: v for k, v in given.items() if v is not None})

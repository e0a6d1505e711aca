"""The frozen choice as a step of the fit: which cached view the head reads, measured on the
validation split (decide.candidates), and what it puts into the plan.

For cases 1 and 2 the choice is the model's input (and may move the plan from one case to the
other); for cases 3 and 4 it is the warm start that fine-tuning begins from and must beat.
"""

from __future__ import annotations

import dataclasses

from ..core.stats import standard_error
from ..features.paired import primary_view
from .candidates import Choice, choose_view
from .planner import Plan

__all__ = [
    "FROZEN_BUILTINS",
    "searches_views",
    "choose_frozen",
    "with_frozen_choice",
    "with_warm_start",
]

# The built-in frozen strategies of cases 1 and 2, which the view measurement picks between.
FROZEN_BUILTINS = ("linear_head", "cut_head")


def searches_views(plan: Plan, strategy: str | None, case: int | None) -> bool:
    """Whether the frozen head's input is measured: for the built-in frozen strategies,
    unless the user fixed case 1 (last stage, pooled) or named a strategy."""
    return plan.strategy in FROZEN_BUILTINS and strategy is None and case != 1


def choose_frozen(features, data, seed: int, console, include_default: bool = True) -> Choice:
    """A head on every cached view, compared on validation (remembered by content); without
    the case-1 view when `include_default` is False (the user asked for case 2)."""
    last = features.spec.stages[-1].name
    y_train, y_val = data.labels(data.train), data.labels(data.val)
    return choose_view(
        features, data.train, data.val, y_train, y_val, last, seed, console, include_default
    )


def _view_fields(view, spec) -> dict:
    """The frozen head's input as plan fields: the stage the backbone runs to, the grid, the
    cache key, and a joined view's members."""
    return {
        "cut": view.stage,
        "grid": view.grid,
        "view": view.name,
        "parts": [[spec.stages[i].name, g] for i, g in view.parts],
    }


def _without_cut_reason(reasons: list[str]) -> list[str]:
    """The k-NN probes' cut point is a proxy; the measured choice replaces it."""
    return [r for r in reasons if not r.startswith("cut point:")]


def with_frozen_choice(plan: Plan, choice: Choice, spec, n_val: int) -> Plan:
    """Cases 1/2: the plan with the measured view as the model's input, the case that view
    means (the last stage pooled is case 1, anything else case 2), every candidate, and the
    expected accuracy (the chosen head's 95% interval)."""
    last = spec.stages[-1].name
    case = 1 if primary_view(choice.view.name) == last else 2  # a pair: its first backbone's
    reasons = list(plan.reasons)
    if case != plan.case:
        reasons.append(
            f"the measurement overrides the size/similarity rule: case {plan.case} -> case {case}"
        )
    best = next(c for c in choice.candidates if c["view"] == choice.view.name)
    acc, se = best["val_acc"], choice.se
    expected = {
        "low": round(max(0.0, acc - 1.96 * se), 4),
        "high": round(min(1.0, acc + 1.96 * se), 4),
        "probe_accuracy": acc,
        "basis": f"95% interval of the chosen head's validation accuracy on "
        f"{n_val} images (chosen among {len(choice.candidates)} views on that split)",
    }
    return dataclasses.replace(
        plan,
        case=case,
        strategy=FROZEN_BUILTINS[case - 1],
        candidates=choice.candidates,
        reasons=_without_cut_reason(reasons) + [choice.reason],
        expected_accuracy=expected,
        **_view_fields(choice.view, spec),
    )


def with_warm_start(plan: Plan, choice: Choice, val_acc: float, C: float, spec, n_val: int):
    """Cases 3/4: the plan with the frozen choice fine-tuning starts from (its validation
    accuracy `val_acc` and L2 strength `C`), every candidate, and the expected accuracy: at
    least the warm start's band, since fine-tuning replaces it only when it validates better."""
    low = val_acc - 1.96 * standard_error(val_acc, n_val)
    expected = {
        "low": round(max(0.0, low), 4),
        "high": 1.0,
        "probe_accuracy": round(val_acc, 4),
        "basis": f"the frozen choice's validation accuracy on {n_val} images (95% "
        "interval below it): fine-tuning starts from it and replaces it only when it "
        "validates better",
    }
    return dataclasses.replace(
        plan,
        candidates=choice.candidates,
        reasons=_without_cut_reason(plan.reasons) + [f"warm start: {choice.reason}"],
        warm_start={"view": choice.view.name, "val_acc": val_acc, "C": C},
        expected_accuracy=expected,
        **_view_fields(choice.view, spec),
    )

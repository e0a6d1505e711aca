"""The frozen-backbone decision as a measurement: a real head on every cached view, compared
on the validation split.

A *view* is one stage's feature map average-pooled to a g x g grid (g = 1 is the usual global
pooling). Early stages keep spatial layout that global pooling throws away, so a head on a
small grid of an early stage can beat every globally pooled stage (digits, X-rays); on photos
like the source domain's the last stage, pooled, usually wins. Every view's rows are in the
feature cache, so each candidate costs one logistic-regression fit (automl_tl.train.logreg).

One more candidate joins them: the leaders of distinct stages, concatenated (the best view of
each of up to `JOIN_MAX` stages, within `JOIN_WIDTH` features). Stages see an image at
different scales, and a head on several of them can beat each one alone (on mnist: 0.9930
validation for block4@4x4 + block5@2x2 + block6@2x2 against 0.9925 for block5@2x2 alone, and
0.9910 against 0.9880 on the test split). Its rows are the members' cached rows side by side,
so it costs one more fit.

Choice: the candidate with the best validation accuracy (ties: lower validation loss), except
that the last stage globally pooled (case 1, the fewest assumptions) is kept whenever it is
within one standard error of that best: picking the maximum of many noisy accuracies favours
whatever was lucky on this split. Large training sets are screened on a stratified subset,
and the leaders are fitted again on every training row before the choice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ..core.console import Console
from ..core.stats import standard_error
from ..features.memo import content_key
from ..features.views import JOIN_MAX, JOIN_WIDTH, JOINER, View, joined_view, view_named
from ..train.logreg import LogRegResult, as_float_rows, fit_logreg

__all__ = [
    "Candidate",
    "Selection",
    "select_view",
    "Choice",
    "choose_view",
]


def _leaders_to_join(ranked: list, views: dict[str, View]) -> list[View]:
    """The best view of each of the `JOIN_MAX` best stages (in `ranked` order, single views
    only), as wide as `JOIN_WIDTH` allows; fewer than two means no joined candidate."""
    chosen: list[View] = []
    for c in ranked:
        v = views[c.view]
        if any(m.stage_index == v.stage_index for m in chosen):
            continue
        if sum(m.width for m in chosen) + v.width > JOIN_WIDTH:
            continue
        chosen.append(v)
        if len(chosen) == JOIN_MAX:
            break
    return chosen if len(chosen) > 1 else []


@dataclass
class Candidate:
    """One view's head, measured."""

    view: str
    stage: str
    grid: int
    width: int
    val_acc: float
    val_loss: float
    C: float
    train_rows: int  # training rows this measurement used (a subset while screening)
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    """The chosen view, its head fitted on every training row, and every candidate tried."""

    view: View
    result: LogRegResult
    candidates: list[Candidate] = field(default_factory=list)
    reason: str = ""
    standard_error: float = 0.0


def _stratified(y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most `limit` rows keeping class proportions (every row when fewer)."""
    if len(y) <= limit:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, round(limit * len(idx) / len(y)))
        keep.append(rng.choice(idx, min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def _measure(view: View, rows_tr, y_tr, rows_va, y_va, n_classes, idx=None) -> tuple:
    t0 = time.perf_counter()
    y = y_tr
    if idx is not None:  # screening: only the subset's rows are dequantised
        rows_tr = rows_tr.subset(idx) if hasattr(rows_tr, "subset") else rows_tr[idx]
        y = y_tr[idx]
    result = fit_logreg(rows_tr, y, rows_va, y_va, n_classes)
    cand = Candidate(
        view.name,
        view.stage,
        view.grid,
        view.width,
        round(result.val_acc, 4),
        round(result.val_loss, 4),
        result.C,
        len(y),
        round(time.perf_counter() - t0, 2),
    )
    return cand, result


def select_view(
    views: list[View],
    rows,
    y_train: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    default: str,
    console=None,
    screen_rows: int = 3000,
    refit_top: int = 3,
    seed: int = 0,
) -> Selection:
    """Fit a head on every view and choose one (see the module docstring).

    Args:
        views: the candidates; `default` names the case-1 view (last stage, grid 1).
        rows: callable(view) -> (train rows, validation rows), as arrays or stored rows.
        screen_rows: above this many training rows, views are first measured on a
            stratified subset of that size; the `refit_top` leaders and the default are then
            fitted on every row.
    """
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    subset = _stratified(y_train, screen_rows, seed) if len(y_train) > screen_rows else None
    measured: dict[str, tuple[Candidate, LogRegResult]] = {}
    screened: list[Candidate] = []
    console = console or Console(quiet=True)
    with console.progress("candidates", len(views), unit="head") as bar:
        for view in views:
            tr, va = rows(view)
            cand, result = _measure(view, tr, y_train, va, y_val, n_classes, subset)
            if subset is None:
                measured[view.name] = (cand, result)
            else:
                screened.append(cand)
            bar.update()
    if subset is not None:
        order = sorted(screened, key=lambda c: (c.val_acc, -c.val_loss), reverse=True)
        leaders = {c.view for c in order[:refit_top]} | ({default} & {v.name for v in views})
        by_name = {v.name: v for v in views}
        for name in sorted(leaders):
            tr, va = rows(by_name[name])
            measured[name] = _measure(by_name[name], tr, y_train, va, y_val, n_classes)
    table = [measured[v.name][0] if v.name in measured else _find(screened, v.name) for v in views]
    by_name = {v.name: v for v in views}
    ranked = sorted(table, key=lambda c: (c.val_acc, -c.val_loss), reverse=True)
    members = _leaders_to_join(ranked, by_name)
    if members:  # the leaders of distinct stages side by side, fitted on every training row
        joined = joined_view(members)
        # in the joined view's (stage) order, as the cache returns its rows: the head fitted
        # here is the one a fit keeps
        pairs = [rows(by_name[name]) for name in joined.name.split(JOINER)]
        tr = torch.cat([as_float_rows(a) for a, _ in pairs], 1)
        va = torch.cat([as_float_rows(b) for _, b in pairs], 1)
        measured[joined.name] = _measure(joined, tr, y_train, va, y_val, n_classes)
        table.append(measured[joined.name][0])
        views = [*views, joined]
    best = max((measured[n][0] for n in measured), key=lambda c: (c.val_acc, -c.val_loss))
    se = standard_error(best.val_acc, len(y_val))
    chosen, why = best, "the best validation accuracy"
    if default in measured and best.view != default:
        d = measured[default][0]
        if d.val_acc >= best.val_acc - se:
            chosen = d
            why = (
                f"the last stage, globally pooled (case 1), is within one standard error "
                f"({se:.3f}) of the best ({best.view} {best.val_acc:.4f}): kept as the choice "
                "with the fewest assumptions"
            )
    elif best.view == default:
        why = "the best validation accuracy, and it is the last stage globally pooled (case 1)"
    screening = (
        f"; views screened on {len(subset)} of {len(y_train)} training rows, the "
        f"{refit_top} leaders and case 1 fitted on all"
        if subset is not None
        else ""
    )
    reason = (
        f"frozen head: '{chosen.view}' ({chosen.width} features) at validation accuracy "
        f"{chosen.val_acc:.4f} (loss {chosen.val_loss:.4f}, C={chosen.C:g}), {why}; "
        f"{len(table)} views tried{screening}"
    )
    view = next(v for v in views if v.name == chosen.view)
    return Selection(view, measured[chosen.view][1], table, reason, se)


def _find(cands: list[Candidate], name: str) -> Candidate:
    return next(c for c in cands if c.view == name)


_MEMO_NAMESPACE = "frozen-views-v2"  # v2: a joined view is among the candidates


class Choice(NamedTuple):
    """What `choose_view` returns. `fit` is the chosen view's logistic regression when this
    call measured the candidates (fitted on every training row with logreg's defaults, so a
    frozen strategy can return it instead of fitting the same head again); None when the
    choice came from the memo."""

    view: View
    candidates: list[dict]
    reason: str
    se: float
    fit: LogRegResult | None = None


def choose_view(
    features,
    train,
    val,
    y_train,
    y_val,
    default: str,
    seed: int,
    console=None,
    include_default: bool = True,
):
    """The frozen head's input for a fit: `select_view` over every view the feature cache
    holds (without the case-1 view `default` when `include_default` is False: the user asked
    for case 2), remembered by content (feature space, images, labels, seed), so a warm re-run
    measures nothing. Returns a Choice."""
    views = {v.name: v for v in features.views if include_default or v.name != default}
    key = content_key(
        [
            features.space,
            sorted(views),
            [s.digest for s in train],
            np.asarray(y_train).tolist(),
            [s.digest for s in val],
            np.asarray(y_val).tolist(),
            seed,
        ]
    )
    known = features.memo.get(_MEMO_NAMESPACE, key)
    view = view_named(str(known.get("view")), views) if isinstance(known, dict) else None
    if view is not None:
        return Choice(view, known["candidates"], known["reason"], known["se"])
    train_rows, val_rows = features.view_rows(train), features.view_rows(val)
    n_classes = int(max(np.max(y_train), np.max(y_val))) + 1
    sel = select_view(
        list(views.values()),
        lambda v: (train_rows(v.name), val_rows(v.name)),
        y_train,
        y_val,
        n_classes,
        default,
        console,
        seed=seed,
    )
    table = [c.to_dict() for c in sel.candidates]
    record = {
        "view": sel.view.name,
        "candidates": table,
        "reason": sel.reason,
        "se": sel.standard_error,
    }
    features.memo.put(_MEMO_NAMESPACE, key, record)
    return Choice(sel.view, table, sel.reason, sel.standard_error, sel.result)

"""The frozen-backbone decision as a measurement: a real head on every cached view, compared
on the validation split.

A *view* is one stage's feature map average-pooled to a g x g grid (g = 1 is the usual global
pooling). Early stages keep spatial layout that global pooling throws away, so a head on a
small grid of an early stage can beat every globally pooled stage (digits, X-rays); on photos
like the source domain's the last stage, pooled, usually wins. Every view's rows are in the
feature cache, so each candidate costs one logistic-regression fit (automl_tl.logreg).

Choice: the candidate with the best validation accuracy (ties: lower validation loss), except
that the last stage globally pooled (case 1, the fewest assumptions) is kept whenever it is
within one standard error of that best: picking the maximum of many noisy accuracies favours
whatever was lucky on this split. Large training sets are screened on a stratified subset,
and the leaders are fitted again on every training row before the choice.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .console import Console
from .logreg import LogRegResult, fit_logreg

__all__ = [
    "frozen_views",
    "MAX_VIEW_WIDTH",
    "GRIDS",
    "View",
    "Candidate",
    "Selection",
    "select_view",
    "standard_error",
]


@dataclass(frozen=True)
class View:
    """One candidate input of a frozen head: a stage pooled to a grid x grid map."""

    name: str  # cache key: the stage name for grid 1, "<stage>@<g>x<g>" otherwise
    stage: str
    stage_index: int
    grid: int
    width: int  # stage channels x grid x grid


# Pooling grids tried per stage, and the widest head input kept (a 4x4 grid of a 1280-wide
# last stage would be 20,480 features: slow to fit, and never better in our measurements).
GRIDS = (1, 2, 4)
MAX_VIEW_WIDTH = 2048


def frozen_views(
    spec, grids: tuple[int, ...] = GRIDS, max_width: int = MAX_VIEW_WIDTH
) -> list[View]:
    """Every (stage, grid) candidate of a backbone, in stage order: grid 1 always, larger grids
    where the stage's map at the input size is at least that large and the flattened width
    stays within `max_width`."""
    size = spec.preprocessing.crop_size
    views = []
    for i, st in enumerate(spec.stages):
        for g in grids:
            side = max(1, size // max(st.stride, 1))
            if g == 1 or (side >= g and st.width * g * g <= max_width):
                name = st.name if g == 1 else f"{st.name}@{g}x{g}"
                views.append(View(name, st.name, i, g, st.width * g * g))
    return views


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


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy on n images, floored at one image's worth
    (a perfect score on few images is not certainty)."""
    n = max(n, 1)
    return math.sqrt(max(acc * (1 - acc), 1.0 / n) / n)


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
        f"{len(views)} views tried{screening}"
    )
    view = next(v for v in views if v.name == chosen.view)
    return Selection(view, measured[chosen.view][1], table, reason, se)


def _find(cands: list[Candidate], name: str) -> Candidate:
    return next(c for c in cands if c.view == name)


_MEMO_NAMESPACE = "frozen-views-v1"


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
    measures nothing. Returns (View, candidate dicts, reason, standard error)."""
    import hashlib
    import json

    views = {v.name: v for v in features.views if include_default or v.name != default}
    key = hashlib.blake2b(
        json.dumps(
            [
                features.space,
                sorted(views),
                [s.digest for s in train],
                np.asarray(y_train).tolist(),
                [s.digest for s in val],
                np.asarray(y_val).tolist(),
                seed,
            ]
        ).encode(),
        digest_size=16,
    ).hexdigest()
    known = features.memo.get(_MEMO_NAMESPACE, key)
    if isinstance(known, dict) and known.get("view") in views:
        return views[known["view"]], known["candidates"], known["reason"], known["se"]
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
    return sel.view, table, sel.reason, sel.standard_error

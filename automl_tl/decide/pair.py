"""The last candidate of the backbone search: a second backbone beside the chosen one.

After the search has kept one backbone (decide.backbones), the best other measured backbone
may add what the first one misses: a head on both views side by side. It is tried in three
steps, each cheaper than the next:

1. the screen: a head on the two views as they are cached (each backbone at its own input),
   on the validation split; it must validate above the chosen backbone alone, else nothing
   more is spent;
2. the estimate: the exported model gives both backbones one input, the chosen one's, so the
   second backbone's rows are computed again at that input (features.paired); its embedding
   at its measured rate, scaled by the pixels, must fit `SEARCH_SHARE` of the budget left;
3. the measurement: the pair's head cross-fitted on the training and validation images like
   every backbone, and kept only when its accuracy is above the chosen backbone's by more
   than one paired standard error (a pair costs a second backbone at every prediction).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..core.distributed import broadcast_object
from ..core.machine import give_back_memory
from ..core.stats import paired_se, standard_error
from ..features.memo import content_key
from ..features.paired import PairedFeatures, at_input_of, views_for
from ..train.logreg import as_float_rows, fit_logreg
from .backbones import PROBE_IMAGES, SEARCH_SHARE, Candidate, Tried
from .candidates import Choice
from .label_issues import FOLDS, cross_fitted

__all__ = ["screen", "pair_choice", "try_pair", "choose_again", "without_pair"]

_SCREEN, _CHOICE = "two-backbones-v1", "pair-choice-v1"


def _labels_key(data, seed) -> list:
    return [
        [s.digest for s in data.train],
        np.asarray(data.labels(data.train)).tolist(),
        [s.digest for s in data.val],
        np.asarray(data.labels(data.val)).tolist(),
        seed,
    ]


def screen(a, b, data, seed: int) -> tuple[float, float]:
    """Validation (accuracy, loss) of a head on the chosen views of candidates `a` and `b`
    side by side, each at its own input, as cached (remembered by content)."""
    views = [a.choice.view.name, b.choice.view.name]
    key = content_key([[a.features.space, b.features.space], views, *_labels_key(data, seed)])
    known = a.features.memo.get(_SCREEN, key)
    if isinstance(known, dict) and {"val_acc", "val_loss"} <= set(known):
        return known["val_acc"], known["val_loss"]
    parts = [
        (as_float_rows(c.features.rows(data.train, v)), as_float_rows(c.features.rows(data.val, v)))
        for c, v in zip((a, b), views, strict=True)
    ]
    tr, va = torch.cat([x for x, _ in parts], 1), torch.cat([x for _, x in parts], 1)
    del parts
    y_tr, y_va = data.labels(data.train), data.labels(data.val)
    result = fit_logreg(tr, y_tr, va, y_va, len(data.classes))
    acc, loss = round(result.val_acc, 4), round(result.val_loss, 4)
    a.features.memo.put(_SCREEN, key, {"val_acc": acc, "val_loss": loss})
    return acc, loss


def pair_choice(paired: PairedFeatures, data, seed: int, candidates: list[dict]) -> Choice:
    """The pair's head on its training rows, measured on validation (remembered by content:
    a warm re-fit fits nothing here; its frozen strategy fits the head then), as a Choice
    whose candidates are the chosen backbone's views and the pair."""
    view = paired.view
    key = content_key([paired.space, view.name, *_labels_key(data, seed)])
    known = paired.memo.get(_CHOICE, key)
    fit, started = None, time.perf_counter()
    if isinstance(known, dict) and {"val_acc", "val_loss", "C"} <= set(known):
        acc, loss, C = known["val_acc"], known["val_loss"], known["C"]
    else:
        tr = as_float_rows(paired.rows(data.train, view.name))
        va = as_float_rows(paired.rows(data.val, view.name))
        y_tr, y_va = data.labels(data.train), data.labels(data.val)
        fit = fit_logreg(tr, y_tr, va, y_va, len(data.classes))
        acc, loss, C = round(fit.val_acc, 4), round(fit.val_loss, 4), fit.C
        paired.memo.put(_CHOICE, key, {"val_acc": acc, "val_loss": loss, "C": C})
    row = {
        "view": view.name,
        "stage": view.stage,
        "grid": view.grid,
        "width": view.width,
        "val_acc": acc,
        "val_loss": loss,
        "C": C,
        "train_rows": len(data.train),
        "seconds": round(time.perf_counter() - started, 2),
    }
    se = standard_error(acc, len(data.val))
    reason = (
        f"two backbones: {paired.backbones} at {paired.spec.preprocessing.crop_size} px "
        f"({view.name}, {view.width} features), validation accuracy {acc:.4f}"
    )
    return Choice(view, [*candidates, row], reason, se, fit)


def _skipped(record, why: str, console):
    record.status, record.reason = "skipped", why
    console.note(f"backbones side by side ({record.backbone}): skipped, {why}")
    return None, record


def try_pair(won, won_tried, other, data, seed, console, deadline, won_predicted):
    """(a Candidate whose features are the pair, or None; the pair's Tried record). `won` is
    the chosen backbone's Candidate (measured: its choice made), `other` the best other one;
    `won_predicted` the chosen one's cross-fitted predictions. The module docstring says how."""
    samples = [*data.train, *data.val]
    y = data.labels(samples)
    name = f"{won.spec.name} + {other.spec.name}"
    params = (won.spec.parameters or 0) + (other.spec.parameters or 0) or None
    record = Tried(name, won.spec.preprocessing.crop_size, params, "measured")
    acc, loss = screen(won, other, data, seed)
    record.val_acc, record.val_loss = acc, loss
    record.view = f"{won.choice.view.name} + {other.choice.view.name}"
    if acc <= won_tried.val_acc:
        return _skipped(
            record,
            f"side by side at each one's own input it validated {acc:.4f}, not above "
            f"{won.spec.name} alone ({won_tried.val_acc:.4f})",
            console,
        )
    spec = at_input_of(other.spec, won.spec)
    try:
        views = views_for(spec, other.choice.view.name)
    except KeyError:
        return _skipped(
            record, f"{other.choice.view.name} has no map at {spec.name}'s input", console
        )
    second = other.features.sibling(spec=spec, views=views)
    todo = second.missing(samples)
    rate = second.embed_rate() or _scaled_rate(other, spec)
    if todo and rate is None:  # time it on a few images (kept in the cache), as the search does
        second.runner(len(todo))  # an export or session start is not embedding
        second.ensure(todo[:PROBE_IMAGES])
        rate, todo = second.embed_rate(), todo[PROBE_IMAGES:]
    guess = won_tried.choice_seconds
    estimate = len(todo) / rate + guess if todo and rate else (math.inf if todo else guess)
    left = deadline - time.monotonic()
    record.estimate_seconds = round(estimate, 1) if math.isfinite(estimate) else None
    if broadcast_object(estimate > SEARCH_SHARE * left):  # rank 0's clock under torchrun
        _let_go(second)
        return _skipped(
            record,
            f"estimated {estimate:.0f} s ({len(todo)} images of {other.spec.name} at "
            f"{won.spec.preprocessing.crop_size} px) is more than {SEARCH_SHARE:.0%} of the "
            f"{max(left, 0):.0f} s of budget left",
            console,
        )
    console.note(
        f"backbones side by side ({name}): screened at {acc:.4f} on validation (above "
        f"{won_tried.val_acc:.4f}); estimated {estimate:.0f} s: measuring it"
    )
    second.ensure(samples)
    second.release()
    started = time.perf_counter()
    paired = PairedFeatures(won.features, won.choice.view, second, other.choice.view.name)
    choice = pair_choice(paired, data, seed, won.choice.candidates)
    predicted = np.asarray(cross_fitted(paired, data, choice, seed, console)["predicted"])
    rates = [won.features.embed_rate(), second.embed_rate()]
    if all(rates):  # both graphs on every image (each rate includes a decode: errs slow)
        record.images_per_second = round(1 / sum(1 / r for r in rates), 1)
    record.embed_seconds = round(second.stats.seconds, 2)
    record.choice_seconds = round(time.perf_counter() - started, 2)
    mine = next(c for c in choice.candidates if c["view"] == choice.view.name)
    record.val_acc, record.val_loss, record.view = (
        mine["val_acc"],
        mine["val_loss"],
        choice.view.name,
    )
    cv, base = float(np.mean(predicted == y)), float(np.mean(np.asarray(won_predicted) == y))
    se = paired_se(predicted, np.asarray(won_predicted), y)
    record.cv_acc = round(cv, 4)
    if cv - base > se + 1e-9:
        record.status = "chosen"
        record.reason = (
            f"cross-fitted accuracy {cv:.4f} on {len(y)} images ({FOLDS} folds), above "
            f"{won.spec.name} alone ({base:.4f}) by {cv - base:+.4f}, more than one paired "
            f"standard error ({se:.4f}): both backbones run in the exported model"
        )
        console.note(f"backbones side by side ({name}): kept, {record.reason}")
        choice = choice._replace(reason=f"{choice.reason}; kept: {record.reason}")
        return Candidate(won.spec, won.net, paired, choice), record
    record.reason = (
        f"cross-fitted accuracy {cv:.4f} vs {won.spec.name} alone {base:.4f}: "
        f"{cv - base:+.4f} is within one paired standard error ({se:.4f}); one backbone is "
        "kept, since a second one doubles the cost of every prediction"
    )
    console.note(f"backbones side by side ({name}): measured, {record.reason}")
    _let_go(second)
    return None, record


def _let_go(second) -> None:
    """The second backbone's cache closed and its session freed (the pair was not kept)."""
    second.close()
    second.release()
    give_back_memory()


def _scaled_rate(other, spec) -> float | None:
    """`other`'s measured embedding rate at `spec`'s input (pixels scale the cost)."""
    rate = other.features.embed_rate()
    if not rate:
        return None
    own = other.spec.preprocessing.crop_size
    return rate * (own / spec.preprocessing.crop_size) ** 2


def choose_again(features, data, seed: int, console, include_default: bool = True) -> Choice:
    """The frozen choice on changed data (the label issues dropped): every view measured
    again; a pair's head fitted again on the same two views."""
    from .frozen import choose_frozen

    if not isinstance(features, PairedFeatures):
        return choose_frozen(features, data, seed, console, include_default)
    base = choose_frozen(features.first, data, seed, console, include_default)
    return pair_choice(features, data, seed, base.candidates)


def without_pair(features, data, seed, console, include_default, why: str, changes: dict):
    """The chosen backbone alone, when its plan fine-tunes (one network): its features and
    frozen choice, and the search's reason and plan changes without the pair."""
    from .frozen import choose_frozen

    features = features.first
    choice = choose_frozen(features, data, seed, console, include_default)
    tried = [
        dict(t, status="measured") if t["status"] == "chosen" and " + " in t["backbone"] else t
        for t in changes["backbones"]
    ]
    why = f"{why}; no second backbone beside it: its plan fine-tunes one network"
    return features, choice, why, {"backbones": tried, "paired": {}}

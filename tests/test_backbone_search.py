"""--backbone auto (automl_tl.decide.backbones): which backbones are candidates, the rule across
them, the estimate that lets one run or skips it, and a real fit that measures every installed
EfficientNet-Lite."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from automl_tl.core.files import file_sha256
from automl_tl.decide.backbones import (
    Candidate,
    Tried,
    choose_backbone,
    cost_order,
    estimate_seconds,
    offline_candidates,
    search,
)
from automl_tl.plugins import get_plugins

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _lite_installed() -> bool:
    found = [s.name for s in offline_candidates(get_plugins().backbones)]
    return all(name in found for name in LITE)


needs_lite = pytest.mark.skipif(
    not _lite_installed(), reason="the Lite1/Lite2 weight packages (dependencies) are not installed"
)


def _spec(name, params, crop, path="w.pth"):
    prep = SimpleNamespace(crop_size=crop)
    return SimpleNamespace(
        name=name, parameters=params, preprocessing=prep, weights_path=lambda: path
    )


def test_candidates_are_the_backbones_with_weights_on_disk_cheapest_first():
    specs = {
        "big": _spec("big", 6_000_000, 260),
        "none": _spec("none", 1_000, 224, path=None),  # no weights here: not a candidate
        "small": _spec("small", 4_000_000, 224),
        "mid": _spec("mid", 5_000_000, 240),
        "unknown": _spec("unknown", None, 224),  # no parameter count: last
    }
    assert [s.name for s in offline_candidates(specs)] == ["small", "mid", "big", "unknown"]
    assert cost_order(specs["small"]) < cost_order(specs["mid"])


def test_the_installed_lite_family_is_searched_in_size_order():
    names = [s.name for s in offline_candidates(get_plugins().backbones)]
    lite = [n for n in names if n in LITE]
    assert lite == [n for n in LITE if n in lite]  # Lite0, then Lite1, then Lite2
    assert names[0] == "efficientnet_lite0"  # the default weights always ship


def _tried(name, acc, loss=0.5):
    return Tried(name, 224, 1, "measured", acc, loss, "head")


def _predictions(y, wrong):
    """Predictions of labels `y` that are wrong exactly on the images `wrong`."""
    pred = y.copy()
    pred[list(wrong)] = (y[list(wrong)] + 1) % 3
    return pred


Y = np.arange(400) % 3


def test_a_bigger_backbone_must_beat_the_cheaper_by_more_than_one_paired_standard_error():
    # a wrong on 0-9, b on 0-5: 4 images tell them apart, se sqrt(4 - 16/400) / 400 = 0.005;
    # the difference 0.01 is above it
    tried = [_tried("a", 0.9), _tried("b", 0.9)]
    pick, why = choose_backbone(
        tried, {0: _predictions(Y, range(10)), 1: _predictions(Y, range(6))}, Y
    )
    assert pick == 1
    assert "above every cheaper one by more than one paired standard error (a +0.0100 vs " in why
    assert "0.0050)" in why
    # b right on 1 more image than a: within one paired standard error (the floor, 1/400)
    pick, why = choose_backbone(
        tried, {0: _predictions(Y, range(10)), 1: _predictions(Y, range(9))}, Y
    )
    assert pick == 0
    assert "within one paired standard error (0.0025) of the best (b 0.9775)" in why


def test_skipped_backbones_are_not_chosen_and_the_cheapest_within_noise_wins():
    skipped = Tried("c", 260, 1, "skipped")
    tried = [_tried("a", 0.80), _tried("b", 0.955), _tried("c2", 0.96), skipped]
    preds = {0: _predictions(Y, range(40)), 1: _predictions(Y, range(10)),
             2: _predictions(Y, range(9))}  # fmt: skip
    pick, why = choose_backbone(tried, preds, Y)
    assert pick == 1
    assert why.endswith(
        "tried: a 0.9000 (validation 0.8000), b 0.9750 (validation 0.9550), c2 0.9775 "
        "(validation 0.9600), c skipped"
    )
    assert why.startswith("backbone search: b (head, cross-fitted accuracy 0.9750 on 400 ")


def test_the_estimate_is_embedding_at_the_measured_rate_plus_a_choice():
    assert estimate_seconds(200, 40.0, 3.0) == pytest.approx(8.0)
    assert estimate_seconds(0, None, 3.0) == 3.0  # every row cached: the choice alone
    assert estimate_seconds(10, None, 3.0) == float("inf")  # no rate: never guessed as free


@needs_lite
def test_a_candidate_whose_estimate_does_not_fit_the_budget_left_is_skipped(digits_dir, tmp_path):
    """A deadline already passed leaves no budget: the first backbone is measured (it always
    runs), every other one is skipped before embedding more than its 64-image probe."""
    from automl_tl.core.console import Console
    from automl_tl.data.dataset import read_data
    from automl_tl.features.cache import FeatureCache

    plugins = get_plugins()
    specs = [plugins.backbone(n) for n in LITE]
    data = read_data(digits_dir, 0.2, 0, Console(quiet=True))

    def open_backbone(spec):
        return Candidate(spec, net := spec.build(), FeatureCache(spec, net, tmp_path / "c"))

    first = open_backbone(specs[0])
    first.features.ensure(data.everything)
    notes: list[str] = []
    console = Console(quiet=True)
    console.note = notes.append
    won, tried, reason = search(
        specs, first, open_backbone, data, 0, console, time.monotonic() - 1, True
    )
    assert won is first
    assert [t.status for t in tried] == ["chosen", "skipped", "skipped"]
    assert [t.val_acc is None for t in tried] == [False, True, True]
    assert all("s of budget left" in t.reason for t in tried[1:])
    assert sum("skipped" in n for n in notes) == 2
    assert reason.startswith("backbone search: efficientnet_lite0 (")


@needs_lite
def test_a_default_fit_measures_every_lite_backbone_and_a_warm_refit_measures_nothing(
    digits_dir, tmp_path, monkeypatch
):
    import automl_tl.decide.candidates as candidates
    import automl_tl.decide.label_issues as label_issues
    import automl_tl.decide.pair as pair
    from automl_tl import AutoTransfer
    from automl_tl.train import logreg

    heads = {"n": 0}
    real = logreg.fit_logreg

    def counted(*args, **kwargs):
        heads["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(candidates, "fit_logreg", counted)
    monkeypatch.setattr(pair, "fit_logreg", counted)  # the pair's screen and head
    monkeypatch.setattr(label_issues, "fit_logreg", counted)  # the cross-fitted heads
    cache = tmp_path / "cache"
    model = AutoTransfer(out=tmp_path / "run", epochs=40, cache_dir=cache, quiet=True)
    model.fit(digits_dir)
    cold_heads = heads["n"]
    warm = AutoTransfer(out=tmp_path / "warm", epochs=40, cache_dir=cache, quiet=True)
    warm.fit(digits_dir)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    tried, both = plan["backbones"][:3], plan["backbones"][3:]
    measured = both[0]["cv_acc"] is not None  # the pair passed its screen and was measured
    # cold: each backbone's 23 views and their joined leaders, its chosen head cross-fitted
    # in 5 folds, the pair's screen, and when measured its head and 5 folds; warm: no head
    # measured, nothing embedded, the same outcome
    assert cold_heads == 3 * (24 + label_issues.FOLDS) + 1 + measured * (1 + label_issues.FOLDS)
    assert heads["n"] == cold_heads
    assert warm.cache_stats_["computed"] == 0

    def outcome(plan):
        return [
            (t["backbone"], t["status"], t["val_acc"], t["cv_acc"], t["view"])
            for t in plan.backbones
        ]

    assert outcome(warm.plan_) == outcome(model.plan_)
    assert [t["backbone"] for t in tried] == list(LITE)
    assert [t["status"] for t in tried].count("chosen") == 1
    chosen = next(t for t in tried if t["status"] == "chosen")
    assert plan["backbone"] == chosen["backbone"] == model.spec_.name
    assert all(t["val_acc"] is not None for t in tried)  # the digits fit every budget
    # the kept backbone's frozen choice is the plan's view, at the accuracy the search saw
    assert plan["view"] == chosen["view"]
    kept = next(c for c in plan["candidates"] if c["view"] == plan["view"])
    assert kept["val_acc"] == chosen["val_acc"]
    reason = next(r for r in plan["reasons"] if r.startswith("backbone search: "))
    assert reason.startswith(f"backbone search: {chosen['backbone']} (")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Backbones tried (cheapest first)" in html
    assert f"{chosen['backbone']} ◀ chosen" in html
    # the chosen backbone's view beside the best other one's: screened, then measured at the
    # chosen one's input or skipped with the screen's numbers
    best_other = max(
        (t for t in tried if t["status"] != "chosen"), key=lambda t: (t["cv_acc"], t["val_acc"])
    )
    assert [p["backbone"] for p in both] == [f"{chosen['backbone']} + {best_other['backbone']}"]
    assert both[0]["input"] == chosen["input"]
    if measured:
        assert (
            both[0]["view"] == f"{chosen['view']} & {best_other['backbone']}:{best_other['view']}"
        )
        assert plan["paired"] == (
            {"backbone": best_other["backbone"], "view": best_other["view"],
             "input": chosen["input"], "mean": [0.5] * 3, "std": [0.5] * 3,
             "weights_sha256": file_sha256(
                 get_plugins().backbone(best_other["backbone"]).weights_path())}
            if both[0]["status"] == "chosen" else {}
        )  # fmt: skip
    else:
        assert both[0]["status"] == "skipped"
        assert both[0]["reason"].startswith("side by side at each one's own input it validated ")
        assert both[0]["view"] == f"{chosen['view']} + {best_other['view']}"
        assert plan["paired"] == {}


def test_weights_without_a_named_backbone_is_one_clear_error(tmp_path):
    from automl_tl.core.errors import AutoTLError
    from automl_tl.settings import Settings

    with pytest.raises(AutoTLError, match=r"^--weights belongs to one backbone; name it with "):
        Settings(weights=str(tmp_path / "w.pth")).checked()
    Settings(weights=str(tmp_path / "w.pth"), backbone="resnet18").checked()  # named: allowed


@needs_lite
def test_case_1_skips_the_search_and_says_which_backbone_it_used(digits_dir, tmp_path):
    from automl_tl import AutoTransfer

    model = AutoTransfer(case=1, out=tmp_path / "run", epochs=20, quiet=True).fit(digits_dir)
    assert model.plan_.backbone == "efficientnet_lite0"
    assert model.plan_.backbones == []  # nothing searched
    said = [r for r in model.plan_.reasons if r.startswith("backbone auto: ")]
    assert said == [
        "backbone auto: --case 1 and --strategy skip the frozen choice, which the search "
        "compares backbones by: the cheapest with weights here, efficientnet_lite0, is used "
        "(a fit searches; --backbone NAME picks one)"
    ]

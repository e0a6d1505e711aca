"""A second backbone beside the chosen one (automl_tl.decide.pair, automl_tl.features.paired):
its rows are what the exported model computes from its one input, the screen and the budget
skip it before anything is embedded, and a fit that keeps it exports both backbones."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from automl_tl.decide.backbones import offline_candidates
from automl_tl.plugins import get_plugins

needs_lite = pytest.mark.skipif(
    len(offline_candidates(get_plugins().backbones)) < 3,
    reason="the Lite1/Lite2 weight packages (dependencies) are not installed",
)


def _open(spec, root):
    from automl_tl.decide.backbones import Candidate
    from automl_tl.features.cache import FeatureCache

    net = spec.build()
    return Candidate(spec, net, FeatureCache(spec, net, root))


@needs_lite
def test_the_pair_rows_are_what_its_exported_extractor_computes_from_one_input(
    digits_dir, tmp_path
):
    from automl_tl.core.console import Console
    from automl_tl.data.batches import iter_batches
    from automl_tl.data.dataset import read_data
    from automl_tl.features.cache import FeatureCache
    from automl_tl.features.paired import PairedFeatures, at_input_of, views_for

    plugins = get_plugins()
    first = _open(plugins.backbone("efficientnet_lite0"), tmp_path / "c")
    other = plugins.backbone("efficientnet_lite1")
    spec = at_input_of(other, first.spec)
    assert spec.preprocessing.crop_size == 224 and other.preprocessing.crop_size == 240
    second = FeatureCache(spec, other.build(), tmp_path / "c", views=views_for(spec, "block5@2x2"))
    data = read_data(digits_dir, 0.2, 0, Console(quiet=True))
    view = next(v for v in first.features.views if v.name == "head")
    paired = PairedFeatures(first.features, view, second, "block5@2x2")
    assert paired.view.name == "head & efficientnet_lite1:block5@2x2"
    assert (
        paired.view.width == 1280 + 4 * second.spec.stages[second.spec.stage_index("block5")].width
    )
    samples = data.val[:6]
    rows = paired.rows(samples, paired.view.name).dequantize().numpy()
    # the first backbone's own rows, then the second's at the first one's input
    np.testing.assert_array_equal(
        rows[:, :1280], first.features.rows(samples, "head").dequantize().numpy()
    )
    extractor = paired.head_extractor(first.spec.stage_index("head"), 1, ())
    x = next(iter_batches([s.path for s in samples], first.spec.preprocessing, len(samples)))
    with torch.no_grad():
        computed = extractor.eval()(torch.from_numpy(x)).numpy()
    scale = np.abs(rows).max(axis=1, keepdims=True)
    assert float((np.abs(computed - rows) / scale).max()) < 0.01  # float16 storage
    assert paired.missing(samples) == []
    # the pair's head, and again on fewer training images (--drop-label-issues): the same
    # two views, fitted again
    import dataclasses

    from automl_tl.decide.pair import choose_again, pair_choice

    choice = pair_choice(paired, data, 0, [])
    assert choice.view.name == paired.view.name and choice.fit is not None
    assert [c["view"] for c in choice.candidates] == [paired.view.name]
    assert choice.candidates[0]["width"] == paired.view.width
    fewer = dataclasses.replace(data, train=data.train[2:])
    again = choose_again(paired, fewer, 0, Console(quiet=True))
    assert again.view.name == paired.view.name and again.fit is not None
    assert again.candidates[-1]["train_rows"] == len(data.train) - 2
    # the first backbone's views measured again on those images, then the pair
    assert {c["view"] for c in again.candidates[:-1]} >= {v.name for v in first.features.views}
    assert again.candidates[-1]["view"] == paired.view.name


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One feature cache for this module's fits: the first (the budget test, which needs a
    cost to estimate: a pair whose rows and measurements are all cached costs nothing and
    runs) embeds and measures the three backbones; the others reuse its rows and choices
    (what they test is the pair's step). Tests run in file order."""
    return tmp_path_factory.mktemp("pair-cache")


def _fit(digits_dir, out, cache, **kw):
    from automl_tl import AutoTransfer

    return AutoTransfer(out=out, epochs=40, cache_dir=cache, quiet=True, **kw).fit(digits_dir)


@needs_lite
def test_a_pair_estimated_past_the_budget_is_skipped(digits_dir, tmp_path, monkeypatch, cache):
    import automl_tl.decide.pair as pair

    monkeypatch.setattr(pair, "screen", lambda *a: (1.0, 0.0))  # isolates the rule
    monkeypatch.setattr(pair, "SEARCH_SHARE", 0.0)  # nothing more fits
    model = _fit(digits_dir, tmp_path / "run", cache)
    both = model.plan_.backbones[3]
    assert both["status"] == "skipped"
    assert both["reason"].startswith("estimated ") and "is more than 0% of the " in both["reason"]
    assert both["estimate_seconds"] is not None  # made before it was skipped
    assert model.plan_.paired == {}


@needs_lite
def test_a_screen_below_the_chosen_backbone_skips_the_pair_before_embedding(
    digits_dir, tmp_path, monkeypatch, cache
):
    import automl_tl.decide.pair as pair

    monkeypatch.setattr(pair, "screen", lambda *a: (0.25, 1.5))  # isolates the rule
    opened = []
    real = pair.PairedFeatures
    monkeypatch.setattr(pair, "PairedFeatures", lambda *a: opened.append(a) or real(*a))
    model = _fit(digits_dir, tmp_path / "run", cache)
    both = model.plan_.backbones[3]
    chosen = next(t for t in model.plan_.backbones if t["status"] == "chosen")
    assert both["status"] == "skipped" and opened == []
    assert both["reason"] == (
        "side by side at each one's own input it validated 0.2500, not above "
        f"{chosen['backbone']} alone ({chosen['val_acc']:.4f})"
    )
    assert model.plan_.paired == {}


@needs_lite
def test_a_fit_that_keeps_a_pair_exports_both_backbones_on_one_input(
    digits_dir, tmp_path, monkeypatch, cache
):
    import automl_tl.decide.pair as pair

    # isolates the export from the rule: any pair that passes its screen is kept
    monkeypatch.setattr(pair, "screen", lambda *a: (1.0, 0.0))
    monkeypatch.setattr(pair, "paired_se", lambda *a: -1.0)
    model = _fit(digits_dir, tmp_path / "run", cache)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    chosen, both = (
        plan["backbones"][[t["status"] for t in plan["backbones"]].index("chosen")],
        plan["backbones"][3],
    )
    other = both["backbone"].split(" + ")[1]
    assert both["status"] == "chosen" and both["cv_acc"] is not None
    assert plan["paired"]["backbone"] == other and plan["paired"]["input"] == chosen["input"]
    assert plan["view"] == both["view"] and plan["backbone"] == chosen["backbone"]
    session = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"))
    assert session.get_inputs()[0].shape == ["batch", 3, chosen["input"], chosen["input"]]
    meta = session.get_modelmeta().custom_metadata_map
    beside = json.loads(meta["automl_tl.provenance"])["beside"]
    assert beside["backbone"] == other and beside["weights_sha256"]
    # the exported graph (onnxruntime alone) predicts the validation images as the fit
    # measured them from the cached rows of both backbones
    from automl_tl.core.console import Console
    from automl_tl.data.dataset import read_data

    data = read_data(digits_dir, 0.2, 0, Console(quiet=True))
    pred = [model.classes_.index(c) for c in model.predict([s.path for s in data.val])]
    k = len(model.classes_)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (data.labels(data.val), pred), 1)
    assert confusion.tolist() == model.metrics_["validation"]["confusion_matrix"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert f" with <b>{other}</b> beside it" in html
    # a warm re-fit embeds nothing and keeps the same pair
    warm = _fit(digits_dir, tmp_path / "warm", cache)
    assert warm.cache_stats_["computed"] == 0
    assert warm.plan_.paired == model.plan_.paired

"""Warm-started fine-tuning (train.tune, train.tune_top): the top stages trained on
cached maps start exactly at the frozen choice, keep it unless an epoch beats it beyond the
noise, respect the deadline, and the fit records its estimates, budget and outcome."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import torch

from automl_tl import AutoTransfer
from automl_tl.core.errors import AutoTLError
from automl_tl.core.stats import paired_se
from automl_tl.data.audit import audit
from automl_tl.data.preprocess import Preprocessing
from automl_tl.data.scan import scan
from automl_tl.data.split import split
from automl_tl.features.cache import FeatureCache
from automl_tl.plugins.manager import get_plugins
from automl_tl.train.logreg import fit_logreg
from automl_tl.train.tune_top import PartialConfig, train_top
from automl_tl.train.tune_top_model import map_view, predict_maps, top_model
from tests.helpers import make_subset, shared_dataset


def test_paired_se_counts_only_the_images_the_two_disagree_on():
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    a = np.array([0, 1, 1, 0, 1, 0, 0, 0])  # 6 right
    b = np.array([0, 1, 0, 0, 1, 0, 1, 0])  # 6 right, on other images
    # d = a_right - b_right = [0,0,1,0,0,0,-1,0]: sum 0, sum of squares 2
    assert paired_se(a, b, y) == pytest.approx(np.sqrt(2) / 8)
    assert paired_se(a, a, y) == pytest.approx(1 / 8)  # floored at one image


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    src = shared_dataset("mnist")
    return make_subset(src, tmp_path_factory.mktemp("lpft"), ["3", "5", "8"], 14, 8)


@pytest.fixture(scope="module")
def warm(warm_setup):
    return warm_setup[0]


@pytest.fixture(scope="module")
def warm_setup(digits, tmp_path_factory):
    """Frozen block4@2x2 head on real digits, and block3's cached maps (stage 4 of 9); then
    the cache folder and the (train, val) samples."""
    spec = get_plugins().backbone("efficientnet_lite0")
    net = spec.build()
    cache = tmp_path_factory.mktemp("cache")
    report = audit(scan(digits), None, False)
    train, val, _ = split(report.samples, 0.2, 0)
    y = {s: report.classes.index(s.label) for s in train + val}
    yt, yv = np.array([y[s] for s in train]), np.array([y[s] for s in val])
    features = FeatureCache(spec, net, cache)
    view = next(v for v in features.views if v.name == "block4@2x2")
    fit = fit_logreg(features.rows(train, view.name), yt, features.rows(val, view.name), yv, 3)
    after = view.stage_index - 1
    mv = map_view(spec, after)
    maps = FeatureCache(spec, net, cache, views=[mv])
    rows = maps.rows(train, mv.name), maps.rows(val, mv.name)
    view_val = features.rows(val, view.name).dequantize()
    return (spec, net, view, fit, after, rows, (yt, yv), view_val), cache, (train, val)


def test_epoch_zero_is_the_frozen_head_exactly(warm):
    """Stages after the cached map recomputed from it, pooled, through the head: the same
    predictions as the head on the cached pooled view (both paths stored in fp16)."""
    spec, net, view, fit, after, (rt, rv), (yt, yv), view_val = warm
    top = top_model(spec, net, after, view.stage_index, view.grid, fit.head)
    assert top.shape == (80, 14, 14)  # block3's map at 224 px
    with torch.no_grad():
        frozen = fit.head(view_val).argmax(1).numpy()
    np.testing.assert_array_equal(predict_maps(top, rv), frozen)
    assert float(np.mean(frozen == yv)) == pytest.approx(fit.val_acc)


def test_epoch_zero_of_a_joined_head_is_the_frozen_head_exactly(warm_setup):
    """A head on block4@2x2 and block5 side by side, trained from block3's maps: each member
    pooled from the recomputed stages gives the frozen head's predictions."""
    from automl_tl.features.views import joined_view

    (spec, net, _, _, after, (_, rv), (yt, yv), _), cache, (train, val) = warm_setup
    features = FeatureCache(spec, net, cache)
    by_name = {v.name: v for v in features.views}
    j = joined_view([by_name["block4@2x2"], by_name["block5"]])
    assert j.parts == ((5, 2), (6, 1)) and after == 4
    fit = fit_logreg(features.rows(train, j.name), yt, features.rows(val, j.name), yv, 3)
    top = top_model(spec, net, after, j.stage_index, j.grid, fit.head, j.parts)
    with torch.no_grad():
        frozen = fit.head(features.rows(val, j.name).dequantize()).argmax(1).numpy()
    np.testing.assert_array_equal(predict_maps(top, rv), frozen)
    with pytest.raises(AutoTLError, match="joined view"):
        top_model(spec, net, 5, j.stage_index, j.grid, fit.head, j.parts)


def test_warm_started_full_finetuning_keeps_the_objective_its_head_was_fitted_on(warm):
    """LP-FT trains the head it starts from on plain cross-entropy (its logreg objective), on
    evaluation crops, at the backbone's rate with BatchNorm statistics frozen; under the
    default label smoothing the warm head's own loss would be far from its optimum."""
    from automl_tl.train.tune_full import FinetuneConfig
    from automl_tl.train.warm import warm_config

    base = FinetuneConfig()
    c = warm_config(base)
    assert (c.label_smoothing, c.freeze_batchnorm, c.augment) == (0.0, True, False)
    assert c.lr_head == c.lr_backbone == base.lr_backbone == 1e-4
    assert (base.label_smoothing, base.augment) == (0.1, True)  # a fresh head's defaults
    # the frozen head on real validation rows: far lower loss without smoothing
    _, _, _, fit, _, _, (_, yv), view_val = warm
    with torch.no_grad():
        logits = fit.head(view_val)
    y = torch.as_tensor(yv)
    plain = float(torch.nn.functional.cross_entropy(logits, y, label_smoothing=c.label_smoothing))
    smoothed = float(torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))
    assert plain == pytest.approx(fit.val_loss, rel=1e-4) and plain < smoothed


def test_an_epoch_that_does_not_beat_the_noise_leaves_the_warm_start(warm):
    spec, net, view, fit, after, (rt, rv), (yt, yv), _ = warm
    top = top_model(spec, net, after, view.stage_index, view.grid, fit.head)
    before = {k: v.clone() for k, v in top.state_dict().items()}
    config = PartialConfig(epochs=2, batch_size=8, lr=1e-3, trial_z=-1e9, accept_z=1e9)
    res = train_top(top, rt, yt, rv, yv, 3, config)
    assert res.best_epoch == 0 and res.stop_reason == "epochs"
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert res.notes[-1].startswith("kept the warm start (the frozen head)")
    for k, v in top.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # the warm start restored: the same weights as the caller's network, which was not touched
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in top.net.state_dict().items())


def test_an_epoch_beyond_the_noise_is_kept_and_trains_only_the_top(warm):
    spec, net, view, fit, after, (rt, rv), (yt, yv), _ = warm
    # a timid copy of the head (same predictions, 20x smaller logits): its validation loss
    # is high, so a fine-tuned epoch beats it on loss even where accuracy ties
    head = copy.deepcopy(fit.head)
    with torch.no_grad():
        head.fc.weight.mul_(0.05)
        head.fc.bias.mul_(0.05)
    top = top_model(spec, net, after, view.stage_index, view.grid, head)
    config = PartialConfig(epochs=2, batch_size=8, lr=1e-4, trial_z=-1e9, accept_z=-1e9)
    res = train_top(top, rt, yt, rv, yv, 3, config)
    best = max(res.history[1:], key=lambda h: (h["val_acc"], -h["val_loss"]))
    assert res.best_epoch == best["epoch"] >= 1  # accept_z -1e9: a trained epoch is kept
    np.testing.assert_array_equal(res.val_pred, predict_maps(top, rv))
    changed = {
        k.split(".")[1]
        for k, v in top.net.state_dict().items()
        if not torch.equal(v, net.state_dict()[k])
    }
    # EfficientNet-Lite0 block3's map -> block4 (blocks 8-10 of the upstream model); BatchNorm
    # statistics stay frozen, so only weights of those blocks change
    assert changed == {"_blocks"}
    blocks = {
        int(k.split(".")[2])
        for k, v in top.net.state_dict().items()
        if not torch.equal(v, net.state_dict()[k])
    }
    assert blocks == {8, 9, 10}
    assert not any(
        "running" in k and not torch.equal(v, net.state_dict()[k])
        for k, v in top.net.state_dict().items()
    )


def test_a_trial_epoch_without_gain_stops_training(warm):
    spec, net, view, fit, after, (rt, rv), (yt, yv), _ = warm
    top = top_model(spec, net, after, view.stage_index, view.grid, fit.head)
    config = PartialConfig(epochs=4, batch_size=8, trial_z=1e9)
    res = train_top(top, rt, yt, rv, yv, 3, config)
    assert res.stop_reason == "trial" and [h["epoch"] for h in res.history] == [0, 1]
    assert "trial epoch" in res.notes[0] and res.best_epoch == 0


def test_a_passed_deadline_stops_after_one_batch(warm):
    spec, net, view, fit, after, (rt, rv), (yt, yv), _ = warm
    top = top_model(spec, net, after, view.stage_index, view.grid, fit.head)
    config = PartialConfig(epochs=3, batch_size=8, trial_z=-1e9)
    res = train_top(top, rt, yt, rv, yv, 3, config, deadline=time.monotonic() - 1)
    assert res.stop_reason == "budget" and res.history[-1]["images"] == 8
    assert "stopped after 8 images" in res.notes[0]


# ---------------------------------------------------------------------------- the whole fit
def _fit(data, out, cache, **kw) -> AutoTransfer:
    lite0 = "efficientnet_lite0"  # fine-tuning, not the backbone search, is tested here
    return AutoTransfer(
        backbone=lite0, case=3, out=out, cache_dir=cache, max_analysis_images=24, **kw
    ).fit(data)


@pytest.mark.slow
def test_partial_fit_records_estimates_budget_and_outcome(digits, tmp_path):
    # two epochs: the warm start validates at 1.0 here, so no epoch is kept however many run
    model = _fit(
        digits, tmp_path / "run", tmp_path / "cache", finetune="partial", finetune_epochs=2
    )
    plan = json.loads((model.run_dir_ / "plan.json").read_text())
    kinds = [e["kind"] for e in plan["estimates"]]
    # partial k = 3, 2, 1 from the maps of k stages below the lowest stage the head reads
    spec = model.spec_
    lowest = min(spec.stage_index(n) for n, _ in plan["parts"] or [[plan["cut"], 0]])
    afters = [lowest - k for k in (3, 2, 1) if lowest - k >= 0]
    assert afters, plan["view"]
    assert kinds == ["full"] + ["partial"] * len(afters) + ["frozen"]
    assert [e["after"] for e in plan["estimates"] if e["kind"] == "partial"] == afters
    assert all(e["seconds"] >= 0 and "basis" in e["expected"] for e in plan["estimates"])
    assert plan["time_budget"]["seconds"] == 1200
    assert any(r.startswith("time budget: 1200s (default") for r in plan["reasons"])
    assert plan["warm_start"]["view"] == plan["view"]
    # the warm start already validates at 1.0 on these 24 images: no epoch can beat it
    assert plan["warm_start"]["val_acc"] == 1.0 and plan["outcome"] == "frozen"
    metrics = json.loads((model.run_dir_ / "metrics.json").read_text())
    notes = "\n".join(metrics["notes"])
    assert "fine-tuned block" in notes or "kept the warm start" in notes
    assert not (model.run_dir_ / "checkpoints").exists()  # removed once the run finished
    assert [h["epoch"] for h in metrics["history"]] == list(range(len(metrics["history"])))
    assert metrics["warm_start"] == {
        "view": plan["view"],
        "validation_accuracy": round(plan["warm_start"]["val_acc"], 4),
        "kept": plan["outcome"],
    }
    assert metrics["history"][0]["val_acc"] == pytest.approx(plan["warm_start"]["val_acc"])
    assert metrics["export_check"]["passed"]
    # the kept model's validation accuracy is never below the frozen choice's
    assert metrics["validation"]["accuracy"] >= plan["warm_start"]["val_acc"]


@pytest.mark.slow
def test_a_budget_too_small_for_any_candidate_keeps_the_frozen_choice(digits, tmp_path):
    """A budget already spent by the analysis: no candidate fits however fast this machine
    is (`pytest --clock-scale 0.01` or `100` runs it as if 100x faster or slower)."""
    model = _fit(digits, tmp_path / "run", tmp_path / "cache", time_budget=1e-3)
    metrics = json.loads((model.run_dir_ / "metrics.json").read_text())
    assert model.plan_.outcome == "frozen"
    assert metrics["notes"][0].startswith("no fine-tuning candidate fits the time budget (0s left")
    assert not (model.run_dir_ / "checkpoints").exists()
    assert metrics["validation"]["accuracy"] == pytest.approx(model.plan_.warm_start["val_acc"])
    assert metrics["export_check"]["passed"]


@pytest.mark.slow
def test_map_store_over_the_cap_is_not_a_candidate(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOML_TL_MAP_CACHE_GB", "0.000001")
    model = _fit(digits, tmp_path / "run", tmp_path / "cache", finetune_epochs=1)
    partial = [e for e in model.plan_.estimates if e["kind"] == "partial"]
    assert partial and all(not e["fits"] for e in partial)
    assert all("over the cap of 0.0 GB ($AUTOML_TL_MAP_CACHE_GB)" in e["why_not"] for e in partial)


@pytest.mark.parametrize(
    "stage,left,go,says",
    [
        ("block2", 1000, True, "peaked at stride 8 (<= 8: the pretrained deep features do not"),
        ("block5", 1000, False, "'block5' (stride 32 > 8): the pretrained features carry over"),
        ("block2", 10, False, "its estimate (100s) exceeds the 10s left"),
    ],
)
def test_from_scratch_needs_an_early_peak_and_the_budget(stage, left, go, says):
    from types import SimpleNamespace

    from automl_tl.train.tune import _scratch_verdict

    spec = get_plugins().backbone("efficientnet_lite0")
    task = SimpleNamespace(
        backbone=spec,
        warm_start=SimpleNamespace(stage_index=spec.stage_index(stage)),
        estimates=[{"kind": "scratch", "seconds": 100.0}],
        deadline=time.monotonic() + left,
    )
    text, run = _scratch_verdict(task)
    assert run is go and says in text


@pytest.mark.slow
def test_from_scratch_run_is_kept_when_it_validates_better(tmp_path):
    """The case-4 run from random weights, for real (1 epoch on 12 digits), against a
    current model that got every validation image wrong."""
    from types import SimpleNamespace

    from automl_tl.core.console import Console
    from automl_tl.core.tasks import ImageResult
    from automl_tl.train.tune import _run_scratch
    from automl_tl.train.tune_full import CHECKPOINT_NAME, FinetuneConfig, load_checkpoint

    data = make_subset(shared_dataset("mnist"), tmp_path / "d", ["3", "8"], 6, 3)
    items = {
        part: [
            (p, i) for i, c in enumerate(["3", "8"]) for p in sorted((data / part / c).iterdir())
        ]
        for part in ("train", "val")
    }
    task = SimpleNamespace(
        backbone=get_plugins().backbone("efficientnet_lite0"),
        n_classes=2,
        config=FinetuneConfig(epochs=1),
        weights=None,
        allow_download=False,
        train_items=items["train"],
        val_items=items["val"],
        checkpoint_dir=tmp_path / "checkpoints",
        resume=False,
        console=Console(quiet=True),
        deadline=None,
        input_preprocessing=Preprocessing(crop_size=64, resize_size=73),
    )
    wrong = np.array([1 - y for _, y in items["val"]])
    current = ImageResult(None, 0, [], ["warm"], "frozen", (wrong, None))
    out = _run_scratch(task, current)
    ck = load_checkpoint(tmp_path / "checkpoints" / "scratch" / CHECKPOINT_NAME)
    acc = ck["history"][0]["val_acc"]
    assert acc > 0  # 1 epoch from random weights: at least the majority class (0.5)
    assert (
        out.kept == "scratch"
        and out.notes[-1] == f"kept the from-scratch model ({acc:.4f} vs 0.0000)"
    )
    assert out.model is not None and out.best_epoch == 1
    assert out.preprocessing.crop_size == 64  # trained, so evaluated and exported, at 64 px


def test_a_resumed_run_continues_its_checkpoint_and_ends_as_an_uninterrupted_one(
    warm, tmp_path, monkeypatch
):
    """Two epochs in one go, against a run killed right after its first checkpoint and
    resumed: the same history, the same kept epoch and bit-identical weights."""
    import dataclasses
    import io

    import automl_tl.train.tune_top as partial
    from automl_tl.core.console import Console

    spec, net, view, fit, after, (rt, rv), (yt, yv), _ = warm
    config = PartialConfig(epochs=2, batch_size=8, lr=1e-4, trial_z=-1e9, accept_z=-1e9)

    def fresh():
        return top_model(spec, net, after, view.stage_index, view.grid, fit.head)

    whole = train_top(fresh(), rt, yt, rv, yv, 3, config, checkpoint=tmp_path / "a.pt")

    class Killed(Exception):
        pass

    real_save = partial._save

    def save_then_die(path, *args):
        real_save(path, *args)
        raise Killed

    ck = tmp_path / "b.pt"
    monkeypatch.setattr(partial, "_save", save_then_die)
    with pytest.raises(Killed):
        train_top(fresh(), rt, yt, rv, yv, 3, config, checkpoint=ck)
    monkeypatch.setattr(partial, "_save", real_save)
    assert torch.load(ck, weights_only=True)["epoch"] == 1
    # A resumed run with more time would plan more epochs: the interrupted plan (2) wins, so
    # its cosine schedule ends where it would have.
    longer = dataclasses.replace(config, epochs=4)
    stream = io.StringIO()
    resumed = train_top(
        fresh(), rt, yt, rv, yv, 3, longer, Console(stream=stream), checkpoint=ck, resume=True
    )
    said = stream.getvalue()
    assert "resuming the interrupted run's plan of 2 epochs (this run would have planned 4)" in said
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in whole.history]
    assert resumed.best_epoch == whole.best_epoch
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, whole.model.state_dict()[k], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("bar,kept", [(0.0, "full"), (1.0, "frozen")])
def test_full_finetuning_of_small_images_runs_at_their_input_from_a_refitted_warm_start(
    warm_setup, tmp_path, bar, kept
):
    """28x28 digits fine-tune at 128x128: the warm start is refitted on the view embedded at
    128 (not reused from 224), the epoch trains at 128, and the result says so when kept;
    the bar to beat stays the frozen choice at 224 (here set to 0 and to 1)."""
    import dataclasses
    from types import SimpleNamespace

    from automl_tl.core.console import Console
    from automl_tl.features.views import frozen_views
    from automl_tl.train.tune import _run_full
    from automl_tl.train.tune_full import FinetuneConfig
    from automl_tl.train.warm import WarmStart

    (spec, net, view, fit, _, _, (yt, yv), _), cache, (train, val) = warm_setup
    small = Preprocessing(crop_size=128, resize_size=146)
    refits = []

    def rewarm(prep, name):
        at = dataclasses.replace(spec, preprocessing=prep)
        v = next(v for v in frozen_views(at) if v.name == name)
        rows = FeatureCache(at, net, cache, views=[v])
        f = fit_logreg(rows.rows(train, name), yt, rows.rows(val, name), yv, 3)
        refits.append((prep.crop_size, name, f.head))
        return WarmStart(f.head, name, v.stage_index, v.grid, f.val_acc, yv)

    warm = WarmStart(fit.head, view.name, view.stage_index, view.grid, bar, yv)
    task = SimpleNamespace(
        backbone=spec,
        net=net,
        warm_start=warm,
        input_preprocessing=small,
        rewarm=rewarm,
        config=FinetuneConfig(epochs=1, batch_size=8),
        train_items=[(s.path, int(y)) for s, y in zip(train, yt, strict=True)],
        val_items=[(s.path, int(y)) for s, y in zip(val, yv, strict=True)],
        n_classes=3,
        checkpoint_dir=tmp_path / "checkpoints",
        resume=False,
        console=Console(quiet=True),
        mode="full",
        deadline=None,
    )
    out = _run_full(task, {})
    assert [(size, name) for size, name, _ in refits] == [(128, "block4@2x2")]
    assert not torch.equal(refits[0][2].fc.weight, fit.head.fc.weight)
    assert out.kept == kept and len(out.history) == 1
    assert out.preprocessing == (small if kept == "full" else None)


def test_the_full_estimate_counts_only_the_refit_images_not_yet_cached_at_its_input(
    warm, monkeypatch
):
    """Full fine-tuning at a smaller input first refits the warm start on features at that
    input: its setup is the images not cached there yet, at the frozen graph's rate scaled by
    the pixel ratio (a warm re-run has none to embed). The training-rate measurements are
    fixed here: they are not what this test is about."""
    import automl_tl.train.estimates as estimates
    from automl_tl.train.estimates import estimate_candidates
    from automl_tl.train.warm import WarmStart

    spec, net, view, fit, _, _, (_, yv), _ = warm
    monkeypatch.setattr(estimates, "_full_rate", lambda *a: 50.0)
    monkeypatch.setattr(estimates, "step_rate", lambda *a: 100.0)
    start = WarmStart(fit.head, view.name, view.stage_index, view.grid, 0.9, yv)
    small = Preprocessing(crop_size=112, resize_size=128)
    pixels = (224 / 112) ** 2

    def full_setup(**kw) -> float:
        est = estimate_candidates(spec, net, start, 1000, 200, 1200, 100.0, 1e9, **kw)
        return next(e for e in est if e["kind"] == "full")["setup_seconds"]

    assert full_setup(full_preprocessing=small) == round(1200 / (100.0 * pixels), 1) == 3.0
    assert full_setup(full_preprocessing=small, rewarm_missing=lambda: 600) == 1.5
    assert full_setup(full_preprocessing=small, rewarm_missing=lambda: 0) == 0.0
    assert full_setup(rewarm_missing=lambda: 600) == 0.0  # at the backbone's own input

"""Joined views (automl_tl.decide.candidates): the leaders of distinct stages side by side are one
more frozen candidate; chosen only when it validates best, read back from the feature cache
as its members' rows, computed by the extractor in one forward pass, exported and checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from automl_tl.decide.candidates import select_view
from automl_tl.export.check import check_parity
from automl_tl.export.onnx import export_onnx
from automl_tl.features.cache import FeatureCache
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.features.views import View, joined_view, view_named
from automl_tl.plugins.manager import get_plugins
from automl_tl.train.model import ExportModel
from tests.helpers import make_subset, shared_dataset


def _views() -> list[View]:
    return [
        View("a", "a", 0, 1, 4),
        View("b@2x2", "b", 1, 2, 4),
        View("b", "b", 1, 1, 1),
        View("c", "c", 2, 1, 4),
    ]


def test_joined_view_names_its_members_in_stage_order_and_reads_their_taps():
    a, b2, _, c = _views()
    j = joined_view([c, a, b2])
    assert j.name == "a+b@2x2+c"
    assert (j.stage, j.stage_index, j.grid, j.width) == ("c", 2, 0, 12)
    assert j.taps == ((0, 1), (1, 2), (2, 1))
    assert a.taps == ((0, 1),)
    by_name = {v.name: v for v in _views()}
    assert view_named("a+b@2x2+c", by_name) == j
    assert view_named("b", by_name) is by_name["b"]
    assert view_named("a+z", by_name) is None


def _two_halves(n: int, seed: int, noise_width: int = 4):
    """Four classes; view 'a' tells 0/1 from 2/3, view 'c' tells even from odd: each alone
    reaches about half, side by side they separate all four. 'b@2x2', 'b' and 'a@2x2' are
    noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n // 4)
    a = rng.normal(size=(len(y), 4)).astype(np.float32)
    c = rng.normal(size=(len(y), 4)).astype(np.float32)
    a[:, 0] += 4.0 * (y >= 2)
    c[:, 0] += 4.0 * (y % 2)
    b = rng.normal(size=(len(y), noise_width)).astype(np.float32)
    return y, {"a": a, "a@2x2": b[:, ::-1].copy(), "b@2x2": b, "b": b[:, :1], "c": c}


def _five_views() -> list[View]:
    return [View("a@2x2", "a", 0, 2, 4), *_views()]


def test_the_joined_view_is_chosen_when_it_validates_best():
    yt, tr = _two_halves(400, 0)
    yv, va = _two_halves(200, 1)
    sel = select_view(_five_views(), lambda v: (tr[v.name], va[v.name]), yt, yv, 4, "c")
    names = [c.view for c in sel.candidates]
    # the best view of each of the three stages (a, not the noise a@2x2), listed last
    assert names[:5] == ["a@2x2", "a", "b@2x2", "b", "c"] and len(names) == 6
    joined = sel.candidates[-1]
    # b's two views are both noise; 'b' (one column) validates at 0.26, 'b@2x2' at 0.245
    assert (joined.view, joined.grid, joined.width) == ("a+b+c", 0, 9)
    assert sel.view.name == "a+b+c" and sel.view.parts == ((0, 1), (1, 1), (2, 1))
    assert joined.val_acc > 0.95
    assert max(c.val_acc for c in sel.candidates[:-1]) < 0.6
    assert f"'{joined.view}' ({joined.width} features)" in sel.reason
    assert "6 views tried" in sel.reason
    # The fitted head takes the joined rows as the cache stores them: members in stage order
    # (a, b, c), whatever order they ranked in; a fit reuses this head (a cold fit's 0.10 on
    # mnist was this head fed rank-ordered columns).
    x = torch.cat([torch.as_tensor(va[n]) for n in sel.view.name.split("+")], 1)
    with torch.no_grad():
        acc = float((sel.result.head(x).argmax(1).numpy() == yv).mean())
    assert acc == pytest.approx(joined.val_acc, abs=1e-4)


def test_the_joined_view_is_left_out_when_it_validates_worse():
    # only 'c' tells the classes apart (all four); the others are 40 columns of noise, which
    # the joined head can only overfit to
    yt, tr = _two_halves(200, 0, noise_width=40)
    yv, va = _two_halves(400, 1, noise_width=40)
    for y, rows in ((yt, tr), (yv, va)):
        rows["c"][:, 1] += 3.0 * (y >= 2)
        rows["a"] = rows["a@2x2"][:, :4].copy()
    views = [View("a", "a", 0, 1, 4), View("b@2x2", "b", 1, 2, 40), View("c", "c", 2, 1, 4)]
    sel = select_view(views, lambda v: (tr[v.name], va[v.name]), yt, yv, 4, "c")
    by_name = {c.view: c for c in sel.candidates}
    assert list(by_name) == ["a", "b@2x2", "c", "a+b@2x2+c"]
    assert by_name["a+b@2x2+c"].val_acc < by_name["c"].val_acc
    assert sel.view.name == "c"


def test_no_joined_view_from_a_single_stage():
    yt, tr = _two_halves(200, 0)
    yv, va = _two_halves(200, 1)
    views = [View("a", "a", 0, 1, 4), View("a@2x2", "a", 0, 2, 4)]
    sel = select_view(views, lambda v: (tr[v.name], va[v.name]), yt, yv, 4, "a")
    assert [c.view for c in sel.candidates] == ["a", "a@2x2"]


@pytest.fixture(scope="module")
def lite0_digits(tmp_path_factory):
    src = shared_dataset("mnist")
    folder = make_subset(src, tmp_path_factory.mktemp("joined"), ["1", "7"], 4, 2)
    spec = get_plugins().backbone("efficientnet_lite0")
    return spec, spec.build(None), folder


def test_cached_joined_rows_are_the_members_rows_side_by_side(lite0_digits, tmp_path):
    from automl_tl.data.audit import audit
    from automl_tl.data.scan import scan

    spec, net, folder = lite0_digits
    samples = audit(scan(folder)).samples
    for dtype in ("fp16", "int8"):
        cache = FeatureCache(spec, net, tmp_path / dtype, dtype)
        by_name = {v.name: v for v in cache.views}
        j = joined_view([by_name["block2@4x4"], by_name["block5@2x2"], by_name["head"]])
        got = cache.rows(samples, j.name).dequantize()
        parts = [cache.rows(samples, m).dequantize() for m in j.name.split("+")]
        assert got.shape == (len(samples), j.width) == (len(samples), 640 + 768 + 1280)
        # fp16 rows are copied; int8 rows come back dequantised, then rounded to fp16
        tol = 0 if dtype == "fp16" else 1e-3
        torch.testing.assert_close(got, torch.cat(parts, 1), rtol=tol, atol=tol)


def test_the_extractor_computes_a_joined_view_and_its_onnx_export_matches(lite0_digits, tmp_path):
    spec, net, _ = lite0_digits
    by_name = {v.name: v for v in FeatureCache(spec, net, tmp_path / "c").views}
    j = joined_view([by_name["block2@4x4"], by_name["block5@2x2"]])
    prep = spec.preprocessing
    fx = FeatureExtractor(net, prep, j.stage_index, j.grid, parts=j.parts).eval()
    every = FeatureExtractor(net, prep, j.stage_index, views=j.taps).eval()
    x = torch.rand(2, 3, prep.crop_size, prep.crop_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fx(x), torch.cat(every.stage_features(x), 1))
    torch.manual_seed(0)
    model = ExportModel(fx, nn.Linear(j.width, 2)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", prep.crop_size, {"classes": ["1", "7"]})
    result = check_parity(model, path, x.numpy().astype(np.float32))
    assert result["passed"] and result["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="reach past the cut"):
        FeatureExtractor(net, prep, 3, parts=j.parts)


def test_a_cold_fit_fits_the_chosen_head_once_and_a_warm_refit_gets_the_same_head(
    tmp_path, monkeypatch
):
    """The view choice fits a head per candidate; the chosen one (here a joined view, as
    `make demo` chooses) is handed to the frozen strategy rather than fitted again. It scores
    what the choice measured, a warm re-run (the choice remembered) fits it once, and both
    runs end with the same predictions."""
    import automl_tl.decide.candidates as candidates
    import automl_tl.decide.label_issues as label_issues
    import automl_tl.train.logreg as logreg
    from automl_tl import AutoTransfer
    from automl_tl.data.demo import write_digits

    data = write_digits(tmp_path / "digits")  # the demo's 400 digits
    calls = {"choice": 0, "strategy": 0, "label issues": 0}
    real = logreg.fit_logreg

    def counted(where):
        def fit(*args, **kwargs):
            calls[where] += 1
            return real(*args, **kwargs)

        return fit

    monkeypatch.setattr(candidates, "fit_logreg", counted("choice"))
    monkeypatch.setattr(logreg, "fit_logreg", counted("strategy"))
    monkeypatch.setattr(label_issues, "fit_logreg", counted("label issues"))
    runs = []
    for i in range(2):
        est = AutoTransfer(
            backbone="efficientnet_lite0",  # one backbone's heads counted (the search: its tests)
            out=tmp_path / f"run{i}",
            cache_dir=tmp_path / "cache",
            quiet=True,
        )
        runs.append((est.fit(data), dict(calls)))
        calls.update({k: 0 for k in calls})
    (cold, cold_calls), (warm, warm_calls) = runs
    assert "+" in cold.plan_.view  # a joined view: its columns come in stage order
    tried = len(cold.plan_.candidates)
    # the label issues' out-of-fold heads: one per fold, cold; remembered, warm
    assert cold_calls == {"choice": tried, "strategy": 0, "label issues": label_issues.FOLDS}
    assert warm_calls == {"choice": 0, "strategy": 1, "label issues": 0}
    measured = next(c for c in cold.plan_.candidates if c["view"] == cold.plan_.view)
    accuracy = [r.metrics_["validation"]["accuracy"] for r in (cold, warm)]
    assert accuracy == [measured["val_acc"]] * 2
    assert warm.plan_.view == cold.plan_.view
    files = sorted(p for p in data.rglob("*.png"))
    np.testing.assert_array_equal(warm.predict(files), cold.predict(files))

"""AutoTransfer follows scikit-learn's estimator rules."""

from __future__ import annotations

import json

import onnx
import pytest

from automl_tl import AutoTransfer
from automl_tl.core.errors import NotFittedError


def test_init_stores_arguments_only():
    est = AutoTransfer(epochs=7, seed=3, backbone="whatever-is-checked-in-fit")
    assert est.get_params()["epochs"] == 7 and est.get_params()["seed"] == 3
    assert not [k for k in vars(est) if k.endswith("_")]


def test_unfitted_methods_raise_clear_error(tmp_path):
    est = AutoTransfer()
    for call in (
        lambda: est.predict([tmp_path]),
        lambda: est.score(tmp_path),
        lambda: est.export_onnx(tmp_path / "m.onnx"),
    ):
        with pytest.raises(NotFittedError, match="call fit"):
            call()


def test_fit_returns_self_with_learned_attributes(fitted):
    assert isinstance(fitted, AutoTransfer)
    for attr in ("classes_", "plan_", "metrics_", "audit_", "run_dir_", "onnx_path_", "model_"):
        assert hasattr(fitted, attr), attr
    assert fitted.classes_ == ["0", "1", "7"]


def test_predict_score_and_export(fitted, digits_dir, tmp_path):
    files = sorted((digits_dir / "7").glob("*.png"))
    preds = fitted.predict(files)
    assert len(preds) == len(files) and set(preds) <= set(fitted.classes_)
    proba = fitted.predict_proba(files)
    assert proba.shape == (len(files), 3)
    assert proba.sum(1) == pytest.approx(1.0, abs=1e-5)
    # digits 0/1/7 are easy: the frozen ImageNet features must separate them well.
    assert fitted.score(digits_dir) >= 0.9
    path = fitted.export_onnx(tmp_path / "sub" / "copy.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["automl_tl.classes"]) == fitted.classes_


@pytest.mark.parametrize(
    "params,said",
    [
        ({"time_budget": -5}, "time_budget=-5 is not allowed; use a number above 0"),
        ({"epochs": 0}, "epochs=0 is not allowed; use a whole number at least 1"),
        ({"case": 7}, "case=7 is not allowed; use a whole number at least 1 and at most 4"),
        ({"finetune": "most"}, "finetune='most' is not allowed; use one of auto, partial, full"),
        (
            {"resume": True, "overwrite": True},
            "resume and overwrite exclude each other; pass one of them",
        ),
    ],
)
def test_fit_refuses_bad_parameters_before_any_work(tmp_path, params, said):
    from automl_tl.core.errors import AutoTLError

    with pytest.raises(AutoTLError) as refused:
        AutoTransfer(out=tmp_path / "run", cache_dir=tmp_path / "cache", **params).fit(tmp_path)
    assert str(refused.value) == said
    assert list(tmp_path.iterdir()) == []  # nothing written

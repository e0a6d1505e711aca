"""What keeps the CLI quick: `--help` and plugin loading import no heavy library, the
declared backbone tables agree with the libraries they stand in for, and register hooks run
only when backbones or strategies are asked for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from automl_tl.hookspecs import hookimpl
from automl_tl.plugins import load_plugins

HEAVY = ("torch", "torchvision", "timm", "sklearn", "onnx", "onnxruntime", "faiss", "numpy")


def _modules_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; report which HEAVY modules it imported."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return {"imported": json.loads(out.strip().splitlines()[-1]), "stdout": out}


def test_help_lists_plugin_commands_without_heavy_imports():
    code = (
        "from click.testing import CliRunner\n"
        "from automl_tl.cli import main\n"
        "res = CliRunner().invoke(main, ['--help'])\n"
        "assert res.exit_code == 0, res.output\n"
        "print(res.output)\n"
    )
    run = _modules_after(code)
    assert run["imported"] == []
    assert "plugins" in run["stdout"] and "predict" in run["stdout"]


def test_loading_plugins_imports_nothing_heavy_until_specs_are_used():
    run = _modules_after("from automl_tl.plugins import get_plugins\nget_plugins()\n")
    assert run["imported"] == []
    # Registering the built-in backbones builds no network and reads declared tables:
    # neither torchvision's model zoo (torch._dynamo) nor timm is imported.
    code = "from automl_tl.plugins import get_plugins\nprint(sorted(get_plugins().backbones))\n"
    run = _modules_after(code)
    assert "torchvision" not in run["imported"] and "timm" not in run["imported"]
    assert "resnet18" in run["stdout"] and "efficientnet_lite0" in run["stdout"]


def test_register_hooks_run_on_first_use_and_failures_still_reported():
    calls = []

    def backbones(register):
        calls.append("backbones")
        raise RuntimeError("plugin bug")

    plugin = type("P", (), {"register_backbones": staticmethod(hookimpl(backbones))})()
    ps = load_plugins({"lazy": plugin})
    assert calls == []
    assert ps.failures["lazy"] == "RuntimeError: plugin bug"
    assert "efficientnet_lite0" in ps.backbones and calls == ["backbones"]  # ran once


def test_torchvision_table_matches_torchvision_weights():
    pytest.importorskip("torchvision")
    from torchvision.models import get_model_weights

    from automl_tl.default_plugins import torchvision_backbones as tvb

    for name in tvb.TORCHVISION_BACKBONES:
        default = get_model_weights(name).DEFAULT
        spec = tvb._make_spec(name)
        assert spec.preprocessing == tvb._preprocessing(default), name
        label, url, *_, acc = tvb._DEFAULTS[name]
        assert (label, url) == (str(default), default.url)
        assert acc == default.meta["_metrics"]["ImageNet-1K"]["acc@1"]


def test_timm_table_matches_timm_pretrained_cfg():
    timm = pytest.importorskip("timm")
    from automl_tl.default_plugins import timm_backbones as tb

    for timm_name, stages in tb._MODELS.items():
        cfg = timm.models.get_pretrained_cfg(timm_name)
        spec = tb._make_spec(timm_name, stages)
        assert spec.preprocessing == tb.cfg_preprocessing(cfg), timm_name
        assert tb._CFG[timm_name][-1] == cfg.hf_hub_id


def test_efficientnet_lite_stages_match_the_built_network():
    from efficientnet_lite_pytorch import EfficientNet

    from automl_tl.default_plugins import efficientnet_lite as lite
    from automl_tl.default_plugins._efficientnet_lite_net import LiteStages, derive_stages

    for name in lite._VARIANTS:
        net = LiteStages(EfficientNet.from_name(name.replace("_", "-")))
        assert tuple(lite._STAGES[name]) == tuple(
            tuple(s.__dict__.values()) for s in derive_stages(net)
        )


def test_classification_metrics_agree_with_scikit_learn():
    import warnings

    import numpy as np
    from sklearn import metrics

    from automl_tl.evaluate import classification_metrics

    rng = np.random.default_rng(0)
    for case in range(60):
        k, n = int(rng.integers(2, 6)), int(rng.integers(1, 40))
        y_true, y_pred = rng.integers(0, k, n), rng.integers(0, k, n)
        if case % 4 == 0:
            y_true[y_true == 1] = 0  # a class absent from the truth, maybe predicted
        got = classification_metrics(y_true, y_pred, [f"c{i}" for i in range(k)])
        labels = list(range(k))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, r, f, s = metrics.precision_recall_fscore_support(
                y_true, y_pred, labels=labels, zero_division=0
            )
            balanced = metrics.balanced_accuracy_score(y_true, y_pred)
        assert got["accuracy"] == metrics.accuracy_score(y_true, y_pred)
        assert got["balanced_accuracy"] == balanced
        assert [c["precision"] for c in got["per_class"].values()] == list(p)
        assert [c["recall"] for c in got["per_class"].values()] == list(r)
        assert [c["f1"] for c in got["per_class"].values()] == list(f)
        assert [c["support"] for c in got["per_class"].values()] == list(s)
        cm = metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
        assert got["confusion_matrix"] == cm


def test_estimator_params_work_with_sklearn_clone():
    from sklearn.base import clone

    from automl_tl.api import AutoTransfer

    est = AutoTransfer(epochs=7, seed=3)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert repr(est.set_params(lr=0.1)) == "AutoTransfer(epochs=7, lr=0.1, seed=3)"
    with pytest.raises(ValueError, match="Invalid parameter 'nope'"):
        est.set_params(nope=1)

"""faiss_knn: k selection, the exportable head, the two extra hooks, and one real fit.

Run after installing the package (the entry point is how automl-tl finds it):
    pip install -e plugins/automl-tl-knn && pytest plugins/automl-tl-knn
or, leaving the environment as it is, into a folder put on PYTHONPATH:
    pip install --no-deps --target /tmp/p plugins/automl-tl-knn
    PYTHONPATH=/tmp/p pytest plugins/automl-tl-knn
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from automl_tl_knn import AUTO_ENV, K_CANDIDATES, KNNHead, fit_knn, select_strategy
from click.testing import CliRunner

from automl_tl.plugin import Console, HeadConfig, HeadTask
from automl_tl.plugins import get_plugins


@pytest.fixture(scope="module")
def plugins():
    ps = get_plugins()
    if "faiss_knn" not in ps.strategies:
        pytest.fail(
            "faiss_knn is not registered: install the package first "
            f"(pip install -e plugins/automl-tl-knn); load failures: {ps.failures}"
        )
    return ps


def _task(n_train=30, n_val=12, n_classes=3, width=16, seed=0) -> HeadTask:
    """Gaussian clusters, one per class, far enough apart for k-NN to separate."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, width)) * 3

    def draw(n):
        y = np.arange(n) % n_classes
        return (centres[y] + rng.normal(size=(n, width))).astype(np.float32), y

    (xt, yt), (xv, yv) = draw(n_train), draw(n_val)
    return HeadTask(xt, yt, xv, yv, n_classes, HeadConfig(), Console(quiet=True))


def test_registered_with_all_three_hooks(plugins):
    assert plugins.owner["strategies", "faiss_knn"] == "knn"
    assert plugins.strategy("faiss_knn").case is None  # chosen by name or select_strategy
    assert plugins.hooks_of("knn") == [
        "register_commands",
        "register_strategies",
        "select_strategy",
    ]


def test_k_is_chosen_on_validation_and_the_head_agrees_with_it():
    task = _task()
    result = fit_knn(task)
    (entry,) = result.history
    assert result.best_epoch == 1 and entry["epoch"] == 1
    assert entry["k"] in K_CANDIDATES and entry["val_acc"] == 1.0
    assert set(entry["val_acc_by_k"]) == {str(k) for k in K_CANDIDATES}
    with torch.no_grad():
        logits = result.head(torch.from_numpy(task.x_val))
    assert logits.shape == (len(task.x_val), task.n_classes)
    assert (logits.argmax(1).numpy() == task.y_val).all()
    # softmax(logits) gives back the vote shares
    assert torch.softmax(logits, 1).sum(1).numpy() == pytest.approx(1.0, abs=1e-5)


def test_k_is_capped_by_the_training_set_and_no_validation_is_handled():
    task = _task(n_train=4, n_val=0)
    result = fit_knn(task)
    assert result.history[0]["k"] <= 4 and result.history[0]["val_acc"] is None
    with pytest.raises(ValueError, match="bank size"):
        KNNHead(task.x_train, task.y_train, 3, k=5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False, as automl-tl exports
def test_head_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    task = _task()
    head = fit_knn(task).head
    path = tmp_path / "knn.onnx"
    torch.onnx.export(
        head,
        (torch.from_numpy(task.x_val[:2]),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"x": task.x_val})[0]  # a batch of 12, exported with 2
    with torch.no_grad():
        expected = head(torch.from_numpy(task.x_val)).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_select_strategy_is_inert_unless_asked(monkeypatch):
    # The hook ignores the DatasetProfile, so none is built here: the planner's profile
    # constructor is engine internals a plugin's tests should not depend on.
    monkeypatch.delenv(AUTO_ENV, raising=False)
    assert select_strategy(profile=None) is None
    monkeypatch.setenv(AUTO_ENV, "0")
    assert select_strategy(profile=None) is None
    monkeypatch.setenv(AUTO_ENV, "1")
    assert select_strategy(profile=None) == "faiss_knn"


def test_knn_info_command(plugins):
    from automl_tl.cli import main

    res = CliRunner().invoke(main, ["knn-info"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"automl-tl-knn {plugins.versions['knn']}")


def test_fit_with_the_default_backbone(tmp_path):
    from automl_tl import AutoTransfer
    from automl_tl.data.demo import write_digits

    data = write_digits(tmp_path / "digits", per_class=6, digits=(0, 1))
    model = AutoTransfer(strategy="faiss_knn", out=tmp_path / "run").fit(data)
    assert model.plan_.strategy == "faiss_knn"
    assert model.export_check_["passed"]
    assert model.metrics_["history"][0]["k"] >= 1
    assert set(model.predict([data / "0"])) <= {"0", "1"}

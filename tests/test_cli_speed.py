"""What keeps the CLI quick: `--help` and plugin loading import no heavy library, the
declared backbone tables agree with the libraries they stand in for, and register hooks run
only when backbones or strategies are asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from automl_tl.plugins.hookspecs import hookimpl
from automl_tl.plugins.manager import load_plugins

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
    run = _modules_after("from automl_tl.plugins.manager import get_plugins\nget_plugins()\n")
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

    from automl_tl.plugins.builtin import torchvision_backbones as tvb

    for name in tvb.TORCHVISION_BACKBONES:
        default = get_model_weights(name).DEFAULT
        spec = tvb._make_spec(name)
        assert spec.preprocessing == tvb._preprocessing(default), name
        label, url, *_, acc = tvb._DEFAULTS[name]
        assert (label, url) == (str(default), default.url)
        assert acc == default.meta["_metrics"]["ImageNet-1K"]["acc@1"]


def test_timm_table_matches_timm_pretrained_cfg():
    timm = pytest.importorskip("timm")
    from automl_tl.plugins.builtin import timm_backbones as tb

    for timm_name, stages in tb._MODELS.items():
        cfg = timm.models.get_pretrained_cfg(timm_name)
        spec = tb._make_spec(timm_name, stages)
        assert spec.preprocessing == tb.cfg_preprocessing(cfg), timm_name
        assert tb._CFG[timm_name][-1] == cfg.hf_hub_id


def test_efficientnet_lite_stages_match_the_built_network():
    from efficientnet_lite_pytorch import EfficientNet

    from automl_tl.plugins.builtin import efficientnet_lite as lite
    from automl_tl.plugins.builtin._efficientnet_lite_net import LiteStages, derive_stages

    for name in lite._VARIANTS:
        net = LiteStages(EfficientNet.from_name(name.replace("_", "-")))
        assert tuple(lite._STAGES[name]) == tuple(
            tuple(s.__dict__.values()) for s in derive_stages(net)
        )


def test_classification_metrics_agree_with_scikit_learn():
    import warnings

    import numpy as np
    from sklearn import metrics

    from automl_tl.core.stats import classification_metrics

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

    from automl_tl.estimator import AutoTransfer

    est = AutoTransfer(epochs=7, seed=3)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert repr(est.set_params(lr=0.1)) == "AutoTransfer(epochs=7, lr=0.1, seed=3)"
    with pytest.raises(ValueError, match="Invalid parameter 'nope'"):
        est.set_params(nope=1)


@pytest.fixture(scope="module")
def composed(tmp_path_factory, digits_dir):
    """A model.onnx joined from a real exported embedding graph (EfficientNet-Lite0, real
    weights) cut at stage 4, plus the torch model it stands for and 6 real images."""
    import numpy as np
    import torch

    from automl_tl.data.preprocess import batch_to_float, load_for_model
    from automl_tl.export.onnx import compose_onnx
    from automl_tl.features.extractor import FeatureExtractor
    from automl_tl.features.stage_graph import export_stages
    from automl_tl.plugins.manager import get_plugins
    from automl_tl.train.heads import LinearHead
    from automl_tl.train.model import ExportModel

    spec = get_plugins().backbone("efficientnet_lite0")
    net = spec.build()
    folder = tmp_path_factory.mktemp("composed")
    graph = folder / "stages.onnx"
    export_stages(FeatureExtractor(net, spec.preprocessing, 5).eval(), graph, 224)
    cut, width = 4, spec.stages[4].width
    rng = np.random.default_rng(0)
    head = LinearHead(rng.normal(0, 1, width), rng.uniform(0.5, 2, width), 3).eval()
    model = ExportModel(FeatureExtractor(net, spec.preprocessing, cut), head).eval()
    path = compose_onnx(graph, f"stage{cut}", model, width, folder / "model.onnx", {"k": "v"})
    files = sorted(digits_dir.rglob("*.png"))[:6]
    batch = batch_to_float([load_for_model(f, spec.preprocessing) for f in files])
    torch.manual_seed(0)
    return model, path, batch, cut


def test_composed_check_passes_on_the_model_it_was_built_from(composed):
    from automl_tl.export.check import check_parity

    model, path, batch, cut = composed
    result = check_parity(model, path, batch, stage_output=f"stage{cut}")
    assert result["passed"] and result["n_images"] == 6 and result["torch_full_images"] == 2


def test_composed_check_catches_a_wrong_head_and_a_wrong_backbone(composed):
    import copy

    import torch

    from automl_tl.core.errors import ExportError
    from automl_tl.export.check import check_parity

    model, path, batch, cut = composed
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.fc.bias[0] += 0.01  # a head other than the one exported
    with pytest.raises(ExportError, match="disagrees with torch"):
        check_parity(other, path, batch, stage_output=f"stage{cut}")
    # A backbone other than the one in the graph: the head path cannot see it (it feeds the
    # graph's own features to the torch head); the full torch path on 2 images must.
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.extractor.net.model._conv_stem.weight.mul_(1.01)
    with pytest.raises(ExportError, match="disagrees with torch"):
        check_parity(other, path, batch, stage_output=f"stage{cut}")


def test_composed_check_against_cached_features(composed):
    import numpy as np
    import torch

    from automl_tl.core.errors import ExportError
    from automl_tl.export.check import check_parity

    model, path, batch, cut = composed
    with torch.inference_mode():
        cached = model.extractor(torch.from_numpy(batch)).numpy().astype(np.float16)
    result = check_parity(model, path, batch, stage_output=f"stage{cut}", reference=cached)
    assert result["passed"] and result["torch_full_images"] == 0
    wrong = cached.astype(np.float32) * 1.05  # features the head was not trained on
    with pytest.raises(ExportError, match=r"differ from the cached ones by 4\.8%"):
        check_parity(model, path, batch, stage_output=f"stage{cut}", reference=wrong)
    with pytest.raises(ExportError, match="computes features of shape"):
        check_parity(model, path, batch, stage_output=f"stage{cut}", reference=cached[:, :10])


def test_composing_again_gives_the_same_bytes_and_the_memo_returns_them(composed, tmp_path):
    """Composition is deterministic, so publishing a remembered one is the same as composing
    again; the memo hands back exactly the checked bytes and refuses tampered ones."""
    import copy

    import torch

    from automl_tl.export.composed import composed_key, remember_composed, reuse_composed
    from automl_tl.export.onnx import compose_onnx

    model, path, _, cut = composed
    graph = path.parent / "stages.onnx"
    width = model.head.fc.in_features
    again = compose_onnx(graph, f"stage{cut}", model, width, tmp_path / "b.onnx", {"k": "v"})
    assert again.read_bytes() == path.read_bytes()
    memo_dir = tmp_path / "models"
    memo_dir.mkdir()
    local_graph = memo_dir / "stages.onnx"  # the memo lives beside the embedding graph
    local_graph.symlink_to(graph)
    key = composed_key("a" * 64, f"stage{cut}", model.head, {"k": "v"})
    assert not reuse_composed(local_graph, key, tmp_path / "none.onnx")
    assert not (tmp_path / "none.onnx").exists()
    remember_composed(local_graph, key, path, None)
    assert reuse_composed(local_graph, key, tmp_path / "c.onnx")
    assert (tmp_path / "c.onnx").read_bytes() == path.read_bytes()
    other = copy.deepcopy(model.head)
    with torch.no_grad():
        other.fc.bias[0] += 1e-3
    assert composed_key("a" * 64, f"stage{cut}", other, {"k": "v"}) != key
    assert composed_key("a" * 64, f"stage{cut}", model.head, {"k": "w"}) != key
    assert composed_key("b" * 64, f"stage{cut}", model.head, {"k": "v"}) != key
    memo = memo_dir / f"composed-{key}.onnx"
    memo.write_bytes(memo.read_bytes()[:-1] + b"\0")  # damaged behind its sidecar
    assert not reuse_composed(local_graph, key, tmp_path / "d.onnx")
    assert not (tmp_path / "d.onnx").exists()


def test_the_memo_keeps_the_newest_eight(tmp_path):
    import os

    from automl_tl.export.composed import COMPOSED_KEEP, _prune

    for i in range(COMPOSED_KEEP + 3):
        for suffix in (".onnx", ".json"):
            f = tmp_path / f"composed-{i:02d}{suffix}"
            f.write_bytes(b"x")
            os.utime(f, ns=(i * 10**9, i * 10**9))
    (tmp_path / "stages-x.onnx").write_bytes(b"x")  # the embedding graph is not the memo's
    (tmp_path / "composed-orphan.json").write_text("{}")  # its model pruned by another process
    _prune(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    newest = [f"composed-{i:02d}" for i in range(3, COMPOSED_KEEP + 3)]
    assert left == sorted(
        [f"{n}{s}" for n in newest for s in (".json", ".onnx")] + ["stages-x.onnx"]
    )


def test_a_full_disk_while_remembering_warns_once_and_the_fit_goes_on(tmp_path, monkeypatch):
    import io

    from automl_tl.core.console import Console
    from automl_tl.core.errors import DiskFullError
    from automl_tl.export import composed as export

    def full(target, *args, **kwargs):
        raise DiskFullError(target, 1000)

    monkeypatch.setattr(export, "write_atomic", full)
    console = Console(stream=io.StringIO())
    model = tmp_path / "models" / "stages.onnx"
    model.parent.mkdir()
    for _ in range(2):
        export._remember(model.parent, "k" * 64, b"model bytes", console)
    err = console.stream.getvalue()
    assert err.count("WARNING: feature cache full") == 1 and "composed-kkkk" in err, err
    assert list(model.parent.iterdir()) == []


def test_the_check_names_a_missing_cut_tensor_in_one_line(composed):
    from automl_tl.core.errors import ExportError
    from automl_tl.export.check import check_parity

    model, path, batch, _ = composed
    with pytest.raises(ExportError, match=r"has no tensor 'stage99' to check the backbone cut"):
        check_parity(model, path, batch, stage_output="stage99")


def test_backbones_lists_every_backbone_without_importing_torch():
    """Parameter counts are declared (the contract test checks them) and the torch hub
    folder is found without torch: the table needs no network built, no torch imported."""
    code = (
        "from click.testing import CliRunner\n"
        "from automl_tl.cli import main\n"
        "res = CliRunner().invoke(main, ['backbones', '--json'])\n"
        "assert res.exit_code == 0, res.output\n"
    )
    assert _modules_after(code)["imported"] == ["numpy"]  # each spec's Preprocessing only


@pytest.mark.parametrize("env", [{}, {"TORCH_HOME": "th"}, {"XDG_CACHE_HOME": "xdg"}])
def test_the_torch_hub_folder_is_torchs_own(env, tmp_path, monkeypatch):
    import torch.hub

    from automl_tl.plugins import weights

    for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(tmp_path / value))
    monkeypatch.delitem(sys.modules, "torch.hub")  # the torch-free path
    found = weights.torch_hub_dir()
    monkeypatch.setitem(sys.modules, "torch.hub", torch.hub)
    assert found == Path(torch.hub.get_dir())

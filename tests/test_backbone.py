"""The default backbone, its real weights, and registration through pluggy."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from automl_tl.core.contract import Stage
from automl_tl.core.errors import BackboneError
from automl_tl.data.preprocess import batch_to_float, load_for_model
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.plugins.manager import get_plugins
from automl_tl.plugins.weights import load_state_dict_file
from tests.helpers import shared_dataset


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


def test_unknown_backbone_lists_available():
    with pytest.raises(BackboneError, match="efficientnet_lite0"):
        get_plugins().backbone("resnet9000")

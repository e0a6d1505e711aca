"""Stage runners (onnxruntime vs torch), export reuse and fallback, the torchvision.io
decoder against the PIL loader, and the batch-size picker."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from automl_tl.core import machine
from automl_tl.core.console import Console
from automl_tl.core.errors import AutoTLError
from automl_tl.core.machine import pick_batch_size
from automl_tl.data.batches import iter_batches
from automl_tl.data.decode import jpeg_info, load_image, uses_torchvision
from automl_tl.data.files import expand_paths
from automl_tl.data.preprocess import Preprocessing, batch_to_float, load_for_model
from automl_tl.features import runners
from automl_tl.features.embed import embed
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.features.runners import OrtRunner, TorchRunner, make_runner, pick_engine
from automl_tl.plugins.manager import get_plugins
from tests.helpers import shared_dataset

TINY = Preprocessing(crop_size=32, resize_size=36)
# decode.py silences it at import; pytest resets warning filters for every test.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


class TinyNet(nn.Module):
    """Three conv-BN-activation stages with non-trivial BN statistics; `mode` breaks export."""

    def __init__(self, mode: str = "ok"):
        super().__init__()
        torch.manual_seed(0)
        acts = (nn.ReLU(), nn.ReLU6(), nn.Hardswish())
        widths = (3, 8, 16, 32)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), act)
            for a, b, act in zip(widths[:-1], widths[1:], acts, strict=True)
        )
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        self.mode, self.traced = mode, 0
        self.eval()

    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        if torch.jit.is_tracing():
            self.traced += 1
            if self.mode == "raise":
                raise RuntimeError("this backbone cannot be traced")
        maps = []
        for block in self.blocks[: upto + 1]:
            x = block(x)
            maps.append(x * 2 if self.mode == "wrong" and torch.jit.is_tracing() else x)
        return maps


def tiny(mode: str = "ok") -> FeatureExtractor:
    return FeatureExtractor(TinyNet(mode), TINY, 2)


def rel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(autouse=True)
def fresh_sessions():
    runners._RUNNERS.clear()  # each test sees the files on disk, not open sessions
    yield
    runners._RUNNERS.clear()


# ------------------------------------------------------------------ runners
def test_ort_runner_equals_torch_runner_on_a_tiny_model(tmp_path):
    fx = tiny()
    fx.net.blocks[2].train()  # odd modes on purpose: the exporter must leave them alone
    modes = [m.training for m in fx.modules()]
    batch = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)
    ort_runner = make_runner(fx, 32, "onnxruntime", tmp_path, key="tiny")
    assert isinstance(ort_runner, OrtRunner) and ort_runner.engine == "onnxruntime"
    assert [m.training for m in fx.modules()] == modes
    got, expected = ort_runner.run(batch), TorchRunner(fx, "cpu").run(batch)
    assert [g.shape for g in got] == [(5, 8), (5, 16), (5, 32)]
    assert rel_diff(got, expected) < 1e-5
    assert (tmp_path / "tiny.onnx").is_file() and (tmp_path / "tiny.json").is_file()


def test_ort_equals_torch_on_efficientnet_lite0_and_real_images(tmp_path):
    files = expand_paths([shared_dataset("hymenoptera_data") / "val" / "bees"])[:4]
    spec = get_plugins().backbone("efficientnet_lite0")
    prep = spec.preprocessing
    fx = FeatureExtractor(spec.build(), prep, len(spec.stages) - 1)
    on_ort = embed(fx, files, prep, 2, engine="onnxruntime", model_dir=tmp_path)
    on_torch = embed(fx, files, prep, 2, engine="torch")
    assert [f.shape[1] for f in on_ort] == [s.width for s in spec.stages]
    assert rel_diff(on_ort, on_torch) < 1e-4
    assert len(list(tmp_path.glob("stages-*.onnx"))) == 1


def test_an_export_is_reused_and_a_corrupt_one_is_redone(tmp_path):
    fx, batch = tiny(), np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    make_runner(fx, 32, "onnxruntime", tmp_path, key="k")
    path = tmp_path / "k.onnx"
    stamp, traced = path.stat().st_mtime_ns, fx.net.traced
    runners._RUNNERS.clear()
    again = make_runner(fx, 32, "onnxruntime", tmp_path, key="k")
    assert again.engine == "onnxruntime" and fx.net.traced == traced  # loaded, not exported
    assert path.stat().st_mtime_ns == stamp
    expected = TorchRunner(fx, "cpu").run(batch)
    for corrupt in (lambda b: b[: len(b) // 2], lambda b: b[:-64] + bytes(64)):
        path.write_bytes(corrupt(path.read_bytes()))  # truncated, then same size but damaged
        runners._RUNNERS.clear()
        redone = make_runner(fx, 32, "onnxruntime", tmp_path, key="k")
        assert redone.engine == "onnxruntime" and fx.net.traced > traced
        assert rel_diff(redone.run(batch), expected) < 1e-5
        traced = fx.net.traced
    (tmp_path / "k.json").unlink()  # a file without its checksum is not trusted either
    make_runner(fx, 32, "onnxruntime", tmp_path, key="k")
    assert fx.net.traced > traced


@pytest.mark.parametrize("mode, reason", [("raise", "cannot be traced"), ("wrong", "differs")])
def test_a_backbone_that_does_not_export_falls_back_to_torch(tmp_path, mode, reason):
    fx, out = tiny(mode), io.StringIO()
    runner = make_runner(fx, 32, "auto", tmp_path, key="bad", console=Console(stream=out))
    assert isinstance(runner, TorchRunner)
    note = out.getvalue()
    assert note.count("\n") == 1 and "using torch" in note and reason in note
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob("*.part"))
    traced = fx.net.traced
    assert make_runner(fx, 32, "onnxruntime", tmp_path, key="bad").engine == "torch"
    assert fx.net.traced == traced  # the refusal is remembered, not retried
    batch = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = [f.numpy() for f in fx.stage_features(torch.from_numpy(batch))]
    assert rel_diff(runner.run(batch), expected) < 1e-6


def test_engine_choice(tmp_path):
    assert pick_engine("auto", "cpu") == "onnxruntime"
    assert pick_engine("auto", "cuda") == "torch"
    assert pick_engine("torch", "cpu") == "torch"
    with pytest.raises(AutoTLError, match="unknown engine 'tensorrt'"):
        pick_engine("tensorrt")
    fx = tiny()
    handle = fx.net.blocks[0][1].register_forward_hook(lambda *_: None)
    assert pick_engine("auto", "cpu", fx) == "torch"  # hooks (BN drift) need torch
    handle.remove()
    assert pick_engine("auto", "cpu", fx) == "onnxruntime"
    few = runners.MIN_IMAGES_TO_EXPORT - 1
    assert make_runner(fx, 32, "auto", tmp_path, key="t", n_images=few).engine == "torch"
    make_runner(fx, 32, "onnxruntime", tmp_path, key="t")
    assert make_runner(fx, 32, "auto", tmp_path, key="t", n_images=few).engine == "onnxruntime"
    with pytest.raises(AutoTLError, match="not a plain file name"):
        make_runner(fx, 32, "onnxruntime", tmp_path, key="../x")


def test_export_does_not_fire_registered_hooks(tmp_path):
    fx, calls = tiny(), []
    handle = fx.net.blocks[1][1].register_forward_hook(lambda *_: calls.append(1))
    make_runner(fx, 32, "onnxruntime", tmp_path, key="h")
    assert calls == []  # BNDriftRecorder must not see the check batch or the trace
    TorchRunner(fx, "cpu").run(np.zeros((1, 3, 32, 32), np.float32))
    assert calls == [1]  # and the hooks are back
    handle.remove()


def test_embed_engines_agree_and_keep_row_order(tmp_path):
    rng = np.random.default_rng(4)
    files = []
    for i in range(6):
        files.append(tmp_path / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(files[-1])
    fx = tiny()
    a = embed(fx, files, TINY, engine="onnxruntime", model_dir=tmp_path / "m")
    b = embed(fx, files[::-1], TINY, 4, engine="torch")
    assert rel_diff(a, [f[::-1] for f in b]) < 1e-5


# ------------------------------------------------------------------ decoding
def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth-ish RGB image with some texture (what JPEGs usually hold)."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (h // 12 + 2, w // 12 + 2, 3), dtype=np.uint8))
    arr = np.asarray(low.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    arr = arr + rng.integers(-12, 13, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    img = _photo(400, 300)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    files = {
        "rgb": ("JPEG", img, {"quality": 90}),
        "progressive": ("JPEG", img, {"quality": 90, "progressive": True}),
        "grey": ("JPEG", img.convert("L"), {"quality": 90}),
        "cmyk": ("JPEG", img.convert("CMYK"), {"quality": 90}),
        "exif": ("JPEG", img, {"quality": 90, "exif": exif.tobytes()}),
        "small": ("JPEG", _photo(120, 90, 1), {"quality": 85}),
        "large": ("JPEG", _photo(1100, 800, 2), {"quality": 85}),
        "png": ("PNG", img.convert("RGBA"), {}),
        "gif": ("GIF", img.convert("P"), {}),
    }
    out = {}
    for name, (fmt, im, kw) in files.items():
        out[name] = d / f"{name}.{fmt.lower()}"
        im.save(out[name], fmt, **kw)
    out["truncated"] = d / "truncated.jpg"
    out["truncated"].write_bytes(out["rgb"].read_bytes()[:5000])
    return out


@pytest.mark.parametrize("name", ["rgb", "progressive", "grey", "exif", "small"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_torchvision_decoder_matches_pil_pixels(images, name, interpolation):
    prep = Preprocessing(224, 256, interpolation)
    info = jpeg_info(images[name].read_bytes())
    assert uses_torchvision(info, prep)
    fast, pil = load_image(images[name], prep), load_for_model(images[name], prep)
    assert fast.shape == pil.shape == (224, 224, 3) and fast.dtype == np.uint8
    diff = np.abs(fast.astype(int) - pil.astype(int))
    assert diff.mean() < 0.05 and diff.max() <= 2
    if name == "exif":  # rotated like PIL: compare with the unrotated file turned
        upright = load_for_model(images["rgb"], prep)
        assert np.abs(pil.astype(int) - upright.astype(int)).mean() > 10


@pytest.mark.parametrize("name", ["cmyk", "large", "png", "gif"])
def test_other_files_go_to_the_pil_loader(images, name):
    prep = Preprocessing(224, 256)
    assert not uses_torchvision(jpeg_info(images[name].read_bytes()), prep)
    assert np.array_equal(load_image(images[name], prep), load_for_model(images[name], prep))
    if name == "large":  # 1100x800 -> PIL draft decodes at half size: faster, other pixels
        assert jpeg_info(images[name].read_bytes()) == (1100, 800, 8, 3)
        assert uses_torchvision(jpeg_info(images[name].read_bytes()), Preprocessing(224, 500))
    if name == "cmyk":
        assert jpeg_info(images[name].read_bytes()).components == 4


def test_nearest_and_extreme_aspect_stay_with_pil(images):
    info = jpeg_info(images["rgb"].read_bytes())
    assert not uses_torchvision(info, Preprocessing(224, 256, "nearest"))
    assert not uses_torchvision(info._replace(width=3000, height=300), Preprocessing(224, 256))
    assert jpeg_info(b"\x89PNG\r\n") is None and jpeg_info(b"\xff\xd8\xff\xe0\x00") is None


def test_truncated_jpeg_fails_like_pil(images):
    with pytest.raises(OSError):
        load_for_model(images["truncated"], TINY)
    with pytest.raises(OSError):
        load_image(images["truncated"], TINY)


def test_iter_batches_values_equal_batch_to_float(images):
    paths = [images[n] for n in ("rgb", "grey", "png", "small", "cmyk")]
    prep = Preprocessing(64, 72)
    got = np.concatenate(list(iter_batches(paths, prep, 2)))
    assert np.array_equal(got, batch_to_float([load_for_model(p, prep) for p in paths]))
    fast = np.concatenate(list(iter_batches(paths, prep, 2, loader=load_image)))
    assert fast.dtype == np.float32 and np.abs(fast - got).max() <= 2 / 255 + 1e-7


# ------------------------------------------------------------------ batch size
def test_batch_size_picker():
    gib = 1 << 30
    assert pick_batch_size(224, requested=5, memory=0) == 5  # the user's choice wins
    assert pick_batch_size(224, memory=0) == 8
    assert pick_batch_size(224, memory=1024 * gib) == 256
    mid = pick_batch_size(224, memory=2 * gib)
    assert 8 < mid < 256 and pick_batch_size(448, memory=2 * gib) < mid
    assert pick_batch_size(224, memory=1024 * gib, n_images=100) == 13
    assert pick_batch_size(224, memory=1024 * gib, low=4, high=16) == 16
    assert machine.available_memory() > 0 and runners.available_cores() >= 1
    with pytest.raises(AutoTLError, match="batch size 0"):
        pick_batch_size(224, requested=0)
    assert os.cpu_count()

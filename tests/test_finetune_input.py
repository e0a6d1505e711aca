"""The fine-tuning input path: images decoded once (training store, validation crops),
augmentation on uint8 tensors seeded by (seed, epoch, index), the memory cap's fallback, and
the training resolution chosen from the image sizes."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from automl_tl.core.console import Console
from automl_tl.core.errors import AutoTLError, DataError
from automl_tl.data.images import DecodedImages, EvalImages, ImageDataset, load_train_image
from automl_tl.data.input_size import choose_input, training_preprocessing
from automl_tl.data.preprocess import Preprocessing, batch_to_float, load_for_model

PREP = Preprocessing(crop_size=32, resize_size=36)


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth colour gradient with noise: compresses like a photo, differs per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Real files of several kinds: a small JPEG, a large JPEG (draft-mode decoding), an RGBA
    PNG, a grey 28x28 PNG (mnist-sized) and a tall JPEG."""
    folder = tmp_path_factory.mktemp("input")
    paths = []
    for name, (w, h), kind in [
        ("small.jpg", (120, 90), "RGB"),
        ("large.jpg", (2000, 1500), "RGB"),
        ("alpha.png", (64, 48), "RGBA"),
        ("digit.png", (28, 28), "L"),
        ("tall.jpg", (60, 150), "RGB"),
    ]:
        arr = _photo(w, h, len(paths))
        img = Image.fromarray(arr).convert(kind)
        if kind == "RGBA":
            alpha = np.full((h, w), 255, np.uint8)
            alpha[: h // 2] = 80  # half transparent: flattened over white
            img.putalpha(Image.fromarray(alpha))
        path = folder / name
        img.save(path, quality=90) if name.endswith(".jpg") else img.save(path)
        paths.append(str(path))
    return paths


def _expected(paths, prep=PREP) -> np.ndarray:
    return batch_to_float([load_for_model(p, prep) for p in paths])


# ------------------------------------------------------------------- eval pixels
def test_validation_crops_kept_are_the_pixels_of_load_for_model(images):
    expected = _expected(images)
    kept = EvalImages(images, PREP, cap_bytes=1 << 30)
    first = np.concatenate(list(kept.batches(2)))  # decodes and keeps
    assert kept._kept is not None and kept._kept.shape == (5, 32, 32, 3)
    again = np.concatenate(list(kept.batches(3)))  # from memory, other batch size
    assert first.dtype == again.dtype == np.float32 and again.shape == (5, 3, 32, 32)
    assert np.array_equal(first, expected)
    assert np.array_equal(again, expected)
    # Fine-tuning without augmentation reads the same pixels from its store.
    plain = ImageDataset([(p, 0) for p in images], PREP, augment=False)
    plain.fill()
    assert plain.images.kept == 5
    assert np.array_equal(torch.stack([plain[i][0] for i in range(5)]).numpy(), expected)


def test_a_pass_stopped_part_way_keeps_nothing(images):
    kept = EvalImages(images, PREP, cap_bytes=1 << 30)
    batches = kept.batches(2)
    next(batches)
    batches.close()
    assert kept._kept is None
    assert np.array_equal(np.concatenate(list(kept.batches(2))), _expected(images))


# ------------------------------------------------------------- training store
def test_training_image_decoded_once_at_training_resolution(images):
    prep = Preprocessing(crop_size=224, resize_size=256)
    large = load_train_image(images[1], prep)  # 2000x1500: draft-decoded, then resized
    assert large.dtype == torch.uint8 and tuple(large.shape) == (3, 256, 341)
    digit = load_train_image(images[3], prep)  # smaller than resize_size: not enlarged
    assert tuple(digit.shape) == (3, 28, 28)
    grey = np.asarray(Image.open(images[3]))
    assert np.array_equal(digit.permute(1, 2, 0).numpy(), np.repeat(grey[..., None], 3, -1))


def test_augmentation_is_a_function_of_seed_epoch_and_index(images):
    items = [(p, i % 2) for i, p in enumerate(images)]
    a = ImageDataset(items, PREP, augment=True, seed=3)
    a.fill()
    torch.manual_seed(11)
    rng_before = torch.get_rng_state()
    x, label = a[(2, 1)]
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is untouched
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and label == 1
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # Another dataset object (a resumed run) repeats it, in any order of access.
    b = ImageDataset(items, PREP, augment=True, seed=3)
    b[(1, 1)], b[(2, 0)]
    assert torch.equal(b[(2, 1)][0], x)
    assert not torch.equal(a[(3, 1)][0], x)  # next epoch: another crop, flip and jitter
    assert not torch.equal(ImageDataset(items, PREP, seed=4)[(2, 1)][0], x)  # another seed
    # A batch as the loader fetches it: the same samples, on one thread, threads restored.
    threads = torch.get_num_threads()
    batch = a.__getitems__([(2, 1), (2, 0)])
    assert torch.equal(batch[0][0], x) and torch.equal(batch[1][0], a[(2, 0)][0])
    assert torch.get_num_threads() == threads
    # A copy sent to a loader worker (pickled under spawn) augments alike.
    assert torch.equal(pickle.loads(pickle.dumps(a))[(2, 1)][0], x)
    # The earlier path (decode + PIL augmentation every time) is still selectable.
    old = ImageDataset(items, PREP, seed=3, decode_once=False)
    assert old.images is None
    assert torch.equal(old[(2, 1)][0], old[(2, 1)][0]) and old[(2, 1)][0].shape == (3, 32, 32)


@pytest.mark.parametrize("policy,mirrors", [("standard", True), ("gentle", False)])
def test_the_gentle_policy_never_mirrors_and_keeps_most_of_the_image(tmp_path, policy, mirrors):
    """The gentle policy (measured for warm fine-tuning): crops of 75-100% of the image near
    square and no flip. An image dark on the left, light on the right, over 40 epochs:
    the standard policy mirrors some, the gentle one none, and its crops keep both halves."""
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, 32:] = 255
    path = tmp_path / "halves.png"
    Image.fromarray(arr).save(path)
    ds = ImageDataset([(path, 0)], PREP, augment=True, seed=0, policy=policy)
    ds.fill()
    mirrored, light = 0, []
    for epoch in range(1, 41):
        x = ds[(epoch, 0)][0].mean(0)  # (32, 32) brightness
        mirrored += int(x[:, :16].mean() > x[:, 16:].mean())
        light.append(float((x > x.mean()).float().mean()))
    assert (mirrored > 0) is mirrors
    if not mirrors:  # a crop of >= 75% of the area at aspect 0.9-1.1 keeps 40-60% light
        assert 0.38 <= min(light) and max(light) <= 0.62, (min(light), max(light))


# ----------------------------------------------------------------- memory cap
def test_memory_cap_keeps_what_fits_and_decodes_the_rest_alike(images):
    items = [(p, 0) for p in images]
    full = ImageDataset(items, PREP, seed=5, cap_bytes=1 << 30)
    full.fill()
    assert full.images.kept == 5 and not full.images.full
    sizes = [full.images[i].untyped_storage().nbytes() for i in range(5)]
    assert sizes == [3 * 36 * 48, 3 * 36 * 48, 3 * 36 * 48, 3 * 28 * 28, 3 * 36 * 90]
    stream = io.StringIO()
    capped = ImageDataset(items, PREP, seed=5, cap_bytes=sizes[0] + sizes[1] + 10)
    capped.fill(Console(stream=stream))
    capped.fill(Console(stream=stream))  # already at the cap: nothing decoded, nothing said
    assert capped.images.kept == 2 and capped.images.full
    assert capped.images.nbytes == sizes[0] + sizes[1]
    said = stream.getvalue()
    assert said.count("exceed their memory cap") == 1 and "2 of 5 are kept" in said
    for i in range(5):  # same pixels, so the same training, kept or not
        assert torch.equal(capped[(1, i)][0], full[(1, i)][0])
    assert capped.images.kept == 2  # decoding again did not grow the store past the cap
    none = EvalImages(images, PREP, cap_bytes=3 * 32 * 32 * 5 - 1)  # one byte short
    assert not none.keep
    assert np.array_equal(np.concatenate(list(none.batches(4))), _expected(images))
    assert none._kept is None


def test_undecodable_training_image_names_the_file(images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    store = DecodedImages([images[0], bad], lambda p: load_train_image(p, PREP), 1 << 20)
    with pytest.raises(DataError, match=r"cannot decode training image '.*broken\.jpg'"):
        store.fill()


# ---------------------------------------------------------- training resolution
@pytest.mark.parametrize(
    ("size", "crop", "resize"),
    [
        ((28, 28), 128, 146),  # mnist: 4 x 28 = 112, up to a multiple of 32
        ((16, 16), 64, 73),  # the floor
        ((40, 60), 160, 183),  # the shorter side counts
        ((224, 224), 224, 256),  # as large as the input: unchanged
        ((2000, 1500), 224, 256),
    ],
)
def test_training_resolution_from_the_image_sizes(size, crop, resize):
    prep = Preprocessing(crop_size=224, resize_size=256)
    chosen = training_preprocessing(prep, [size] * 3)
    assert (chosen.crop_size, chosen.resize_size) == (crop, resize)
    assert chosen.interpolation == prep.interpolation and chosen.mean == prep.mean


def test_training_resolution_follows_the_median_and_ignores_empty_sizes():
    prep = Preprocessing(crop_size=224, resize_size=256)
    sizes = [(28, 28)] * 5 + [(1000, 800)] * 4 + [(0, 0)]
    assert training_preprocessing(prep, sizes).crop_size == 128
    assert training_preprocessing(prep, []) is prep
    assert training_preprocessing(prep, [(0, 5)]) is prep


def _pngs(folder, sizes) -> list:
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"{i}.png"
        Image.fromarray(_photo(w, h, i)).save(path)
        paths.append(path)
    return paths


def test_choose_input_reads_the_training_images_headers(tmp_path):
    """auto: 28x28 files -> 128 with the reason naming the median side; large files keep
    the backbone's own (no reason); an unreadable file is passed over."""
    prep = Preprocessing(crop_size=224, resize_size=256)
    small = _pngs(tmp_path, [(28, 28)] * 4)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    chosen, reason = choose_input(prep, "auto", small + [broken])
    assert (chosen.crop_size, chosen.resize_size) == (128, 146)
    assert "median shorter side is 28 px (of 4 read)" in reason
    (tmp_path / "large").mkdir()
    large = _pngs(tmp_path / "large", [(300, 240)] * 2)
    assert choose_input(prep, "auto", large) == (prep, None)
    assert choose_input(prep, "backbone", small) == (prep, None)


def test_choose_input_takes_a_given_size_and_refuses_others():
    prep = Preprocessing(crop_size=224, resize_size=256)
    chosen, reason = choose_input(prep, "96", [])
    assert (chosen.crop_size, chosen.resize_size) == (96, 110)
    assert reason == "input size: 96x96 as given (the backbone's own is 224)"
    assert choose_input(prep, 224, []) == (prep, None)
    for bad in ("100", "256", "16", "big"):
        with pytest.raises(AutoTLError, match=f"input size '{bad}' is not usable"):
            choose_input(prep, bad, [])

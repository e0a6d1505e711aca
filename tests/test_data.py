"""The data layer: scan, audit and split (automl_tl.data) and decoding (data.preprocess).

Every image is generated here into tmp_path with Pillow/numpy; nothing is downloaded or copied.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_tl.core.console import Console
from automl_tl.core.errors import DataError
from automl_tl.data.audit import AuditReport, audit
from automl_tl.data.files import Sample
from automl_tl.data.preprocess import (
    Preprocessing,
    batch_to_float,
    load_for_model,
    load_rgb,
    preprocess,
)
from automl_tl.data.scan import scan
from automl_tl.data.split import split

# --------------------------------------------------------------------------- helpers


def _noise(seed: int, size: tuple[int, int] = (16, 16)) -> Image.Image:
    """A distinct RGB image per seed (so no two generated files share bytes by accident)."""
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def _save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _good_classes(root: Path, classes=("a", "b"), per_class: int = 3, seed0: int = 0) -> None:
    """per_class distinct, valid PNGs in root/<class>/."""
    seed = seed0
    for c in classes:
        for i in range(per_class):
            _save(root / c / f"good{i}.png", _noise(seed))
            seed += 1


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(quiet=False, stream=buf), buf


def _reasons(report_or_manifest) -> dict[str, str]:
    return {str(p): r for p, r in report_or_manifest.problems}


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (Pillow reads the size without decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- scan


def test_scan_folder_per_class_ignores_hidden_and_includes_nested(tmp_path):
    root = tmp_path / "data"
    cat1 = _save(root / "cat" / "1.png", _noise(1))
    cat_nested = _save(root / "cat" / "sub" / "deeper" / "2.png", _noise(2))
    dog1 = _save(root / "dog" / "1.png", _noise(3))
    _write(root / "cat" / ".DS_Store", b"\x00\x01junk")
    _save(root / "dog" / ".ipynb_checkpoints" / "1-checkpoint.png", _noise(4))
    _save(root / ".ipynb_checkpoints" / "x.png", _noise(5))  # hidden folder is not a class
    _save(root / "__MACOSX" / "y.png", _noise(6))
    _write(root / "README.txt", b"a loose file at the top is not a class")

    manifest = scan(root)

    assert manifest.classes_seen == ["cat", "dog"]
    assert manifest.root == root.resolve()
    assert manifest.problems == []
    assert sorted(s.path for s in manifest.samples) == sorted([cat1, cat_nested, dog1])
    labels = {s.path: s.label for s in manifest.samples}
    assert labels == {cat1: "cat", cat_nested: "cat", dog1: "dog"}
    assert all(s.split is None for s in manifest.samples)


def test_scan_keeps_an_empty_class_folder_in_classes_seen(tmp_path):
    _save(tmp_path / "cat" / "1.png", _noise(1))
    (tmp_path / "empty").mkdir()
    manifest = scan(tmp_path)
    assert manifest.classes_seen == ["cat", "empty"]
    assert [s.label for s in manifest.samples] == ["cat"]


def test_scan_train_val_layout_sets_split(tmp_path):
    for i, (split_dir, c) in enumerate([(d, c) for d in ("train", "val") for c in ("cat", "dog")]):
        _save(tmp_path / split_dir / c / "x.png", _noise(i))
    manifest = scan(tmp_path)

    assert manifest.classes_seen == ["cat", "dog"]
    got = sorted((s.path.parent.parent.name, s.label, s.split) for s in manifest.samples)
    assert got == [
        ("train", "cat", "train"),
        ("train", "dog", "train"),
        ("val", "cat", "val"),
        ("val", "dog", "val"),
    ]


def test_scan_validation_folder_name_maps_to_val(tmp_path):
    _save(tmp_path / "train" / "cat" / "x.png", _noise(1))
    _save(tmp_path / "validation" / "cat" / "y.png", _noise(2))
    splits = {s.path.name: s.split for s in scan(tmp_path).samples}
    assert splits == {"x.png": "train", "y.png": "val"}


def test_scan_train_test_layout(tmp_path):
    _save(tmp_path / "train" / "cat" / "a.png", _noise(1))
    _save(tmp_path / "train" / "dog" / "b.png", _noise(2))
    _save(tmp_path / "test" / "cat" / "c.png", _noise(3))
    manifest = scan(tmp_path)
    splits = {s.path.name: (s.label, s.split) for s in manifest.samples}
    assert splits == {
        "a.png": ("cat", "train"),
        "b.png": ("dog", "train"),
        "c.png": ("cat", "test"),
    }
    # "train" and "test" are split folders here, never class names
    assert manifest.classes_seen == ["cat", "dog"]


def test_scan_csv_with_header_reports_missing_and_outside_paths(tmp_path):
    root = tmp_path / "ds"
    a = _save(root / "imgs" / "a.png", _noise(1))
    b = _save(root / "imgs" / "b.png", _noise(2))
    _save(tmp_path / "outside.jpg", _noise(3), format="JPEG")  # exists, but outside the folder
    csv_path = root / "labels.csv"
    csv_path.write_text(
        "path,label\n"
        "imgs/a.png,cat\n"
        "imgs/b.png , dog\n"
        "\n"
        "imgs/missing.png,cat\n"
        "../outside.jpg,bird\n",
        encoding="utf-8",
    )

    manifest = scan(csv_path)

    assert manifest.root == root.resolve()
    assert sorted((s.path, s.label) for s in manifest.samples) == [
        (a.resolve(), "cat"),
        (b.resolve(), "dog"),
    ]
    reasons = _reasons(manifest)
    assert reasons["imgs/missing.png"] == "file not found"
    assert "outside" in reasons["../outside.jpg"]
    assert len(manifest.problems) == 2
    # the header row is not data; every label named is a class seen
    assert "label" not in manifest.classes_seen
    assert manifest.classes_seen == ["bird", "cat", "dog"]


def test_scan_csv_without_header_and_malformed_row(tmp_path):
    _save(tmp_path / "a.png", _noise(1))
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("a.png,cat\nno-label-here\n", encoding="utf-8")
    manifest = scan(csv_path)
    assert [(s.path.name, s.label) for s in manifest.samples] == [("a.png", "cat")]
    assert manifest.problems == [(f"{csv_path}:2", "row is not 'path,label'")]


def test_scan_csv_problem_line_number_counts_the_header(tmp_path):
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("path,label\nno-label-here\n", encoding="utf-8")  # bad row on line 2
    assert scan(csv_path).problems == [(f"{csv_path}:2", "row is not 'path,label'")]


def test_scan_missing_path_raises_naming_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as exc:
        scan(missing)
    assert str(missing) in str(exc.value)


def test_scan_non_csv_file_raises_naming_it(tmp_path):
    txt = tmp_path / "labels.txt"
    txt.write_text("a.png,cat\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a .csv") as exc:
        scan(txt)
    assert str(txt) in str(exc.value)


def test_scan_folder_without_class_folders_raises_naming_it(tmp_path):
    _save(tmp_path / "loose.png", _noise(1))
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(DataError, match="no class folders") as exc:
        scan(tmp_path)
    assert str(tmp_path) in str(exc.value)


# --------------------------------------------------------------------------- audit


def test_audit_lists_every_bad_file_and_keeps_the_good_ones(tmp_path):
    root = tmp_path / "data"
    _good_classes(root, ("a", "b"), per_class=3)

    jpeg = io.BytesIO()
    _noise(100, (40, 40)).save(jpeg, "JPEG", quality=95)  # 1600 px
    truncated = _write(root / "a" / "truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    corrupt_png = _write(
        root / "a" / "corrupt.png", np.random.default_rng(7).bytes(600).replace(b"\x89", b"\x00")
    )
    zero = _write(root / "b" / "zero.jpg", b"")
    text_jpg = _write(root / "b" / "notes.jpg", b"this is a text file, not a JPEG\n")

    dup_src = _save(root / "a" / "dup_1.png", _noise(200))
    dup_copy = _write(root / "a" / "dup_2.png", dup_src.read_bytes())

    cross_a = _save(root / "a" / "cross.png", _noise(300))
    cross_b = _write(root / "b" / "cross.png", cross_a.read_bytes())

    big = _save(root / "b" / "big.png", _noise(400, (64, 64)))  # 4096 px > max_pixels

    console, buf = _console()
    report = audit(scan(root), console=console, max_pixels=2000)

    assert isinstance(report, AuditReport)
    reasons = _reasons(report)
    assert reasons[str(truncated)].startswith("unreadable or truncated image")
    assert reasons[str(corrupt_png)] == "not an image Pillow can read"
    assert reasons[str(zero)] == "empty file (0 bytes)"
    assert reasons[str(text_jpg)] == "not an image Pillow can read"
    assert reasons[str(dup_copy)] == f"duplicate of {dup_src}"
    assert "a" in reasons[str(cross_a)] and "b" in reasons[str(cross_a)]
    assert reasons[str(cross_a)] == reasons[str(cross_b)] == "same image under classes a, b"
    assert reasons[str(big)].startswith("too large")
    assert len(report.problems) == 8

    kept = {s.path for s in report.samples}
    bad = {truncated, corrupt_png, zero, text_jpg, dup_copy, cross_a, cross_b, big}
    assert kept.isdisjoint(bad)
    assert dup_src in kept  # one copy of the in-class duplicate survives
    assert Counter(s.label for s in report.samples) == {"a": 4, "b": 3}
    assert report.classes == ["a", "b"]
    assert report.scanned == 6 + 8 + 1  # every file scanned, the kept duplicate included
    assert report.left_out_classes == []
    assert all(len(s.digest) == 32 for s in report.samples)

    out = buf.getvalue()
    for path in bad:
        assert f"skipped {path}" in out

    d = report.to_dict()
    assert d["usable"] == 7 and d["files_scanned"] == 15
    assert d["per_class"] == {"a": 4, "b": 3}
    assert {p["path"] for p in d["problems"]} == {str(p) for p in bad}
    json.dumps(d)  # the report is JSON-serialisable


def test_audit_duplicate_across_train_and_val_keeps_the_train_copy(tmp_path):
    _good_classes(tmp_path / "train", ("a", "b"), per_class=2)
    train_copy = _save(tmp_path / "train" / "a" / "same.png", _noise(50))
    # "val" sorts after "train"; a name that sorts first checks the split order is used
    val_copy = _write(tmp_path / "val" / "a" / "0_same.png", train_copy.read_bytes())
    report = audit(scan(tmp_path))
    assert _reasons(report)[str(val_copy)] == f"duplicate of {train_copy}"
    kept = {s.path: s.split for s in report.samples}
    assert kept[train_copy] == "train" and val_copy not in kept


def test_audit_records_conversions_and_converted_files_stay_usable(tmp_path):
    root = tmp_path / "data"
    _good_classes(root, ("a", "b"), per_class=1)
    grey = _save(root / "a" / "grey.png", _noise(10).convert("L"))
    palette = _save(root / "a" / "palette.png", _noise(11).convert("P"))
    rgba = _save(root / "b" / "rgba.png", _noise(12).convert("RGBA"))
    cmyk = _save(root / "b" / "cmyk.jpg", _noise(13).convert("CMYK"), format="JPEG")
    deep = _save(root / "b" / "deep.png", Image.fromarray(np.full((32, 32), 30000, np.uint16)))

    with Image.open(deep) as im:
        assert im.mode == "I;16"  # the generated file really is 16-bit
    with Image.open(cmyk) as im:
        assert im.mode == "CMYK"

    report = audit(scan(root))

    assert report.problems == []
    assert report.conversions == {
        "L->RGB": 1,
        "P->RGB": 1,
        "RGBA->RGB": 1,
        "CMYK->RGB": 1,
        "I;16->RGB": 1,
    }
    kept = {s.path for s in report.samples}
    assert {grey, palette, rgba, cmyk, deep} <= kept
    prep = Preprocessing(crop_size=16, resize_size=20)
    for path in (grey, palette, rgba, cmyk, deep):
        assert load_rgb(path).mode == "RGB"
        arr = load_for_model(path, prep)
        assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8


@pytest.mark.parametrize("what", ["empty folder", "only a corrupt file"])
def test_audit_leaves_out_a_class_without_usable_images(tmp_path, what):
    _good_classes(tmp_path, ("a", "b"), per_class=2)
    (tmp_path / "c").mkdir()
    if what == "only a corrupt file":
        _write(tmp_path / "c" / "broken.jpg", b"\xff\xd8\xff garbage")

    console, buf = _console()
    report = audit(scan(tmp_path), console=console)

    assert report.left_out_classes == ["c"]
    assert report.classes == ["a", "b"]
    assert "c" not in {s.label for s in report.samples}
    warnings = [line for line in buf.getvalue().splitlines() if "LEFT OUT" in line]
    assert len(warnings) == 1 and "'c'" in warnings[0]
    assert warnings[0].startswith("WARNING:")


def test_audit_warns_even_with_a_quiet_console(tmp_path):
    _good_classes(tmp_path, ("a", "b"), per_class=1)
    (tmp_path / "c").mkdir()
    buf = io.StringIO()
    audit(scan(tmp_path), console=Console(quiet=True, stream=buf))
    assert "LEFT OUT" in buf.getvalue()


def test_audit_strict_turns_the_first_problem_into_an_error(tmp_path):
    _good_classes(tmp_path, ("a", "b"), per_class=2)
    broken = _write(tmp_path / "a" / "broken.png", b"not a png at all")
    empty = _write(tmp_path / "b" / "empty.png", b"")
    with pytest.raises(DataError) as exc:
        audit(scan(tmp_path), strict=True)
    msg = str(exc.value)
    assert msg.startswith(f"{broken}: not an image Pillow can read")
    assert "(and 1 more)" in msg and str(empty) not in msg
    # the same data without strict goes through
    assert len(audit(scan(tmp_path)).samples) == 4


def test_audit_strict_refuses_a_left_out_class(tmp_path):
    _good_classes(tmp_path, ("a", "b"), per_class=2)
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="LEFT OUT") as exc:
        audit(scan(tmp_path), strict=True)
    assert "'c'" in str(exc.value)


def test_audit_strict_passes_clean_data(tmp_path):
    _good_classes(tmp_path, ("a", "b"), per_class=2)
    report = audit(scan(tmp_path), strict=True)
    assert report.problems == [] and len(report.samples) == 4


def test_audit_needs_two_usable_classes(tmp_path):
    _good_classes(tmp_path, ("a",), per_class=3)
    _write(tmp_path / "b" / "corrupt.png", b"\x00" * 64)
    console, _ = _console()
    with pytest.raises(DataError, match="at least 2 classes") as exc:
        audit(scan(tmp_path), console=console)
    assert "found 1 (a)" in str(exc.value)


def test_audit_includes_csv_scan_problems(tmp_path):
    _save(tmp_path / "a.png", _noise(1))
    _save(tmp_path / "b.png", _noise(2))
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("path,label\na.png,x\nb.png,y\nmissing.png,y\n", encoding="utf-8")
    report = audit(scan(csv_path))
    assert report.problems == [("missing.png", "file not found")]
    assert sorted(s.label for s in report.samples) == ["x", "y"]


def test_audit_survives_an_image_over_pillows_warning_limit(tmp_path):
    _good_classes(tmp_path, ("a", "b"), per_class=2)
    big = _write(tmp_path / "a" / "huge.png", _png_header_only(10_000, 10_000))  # 1e8 px
    report = audit(scan(tmp_path))  # default max_pixels
    assert _reasons(report)[str(big)].startswith("too large")


# --------------------------------------------------------------------------- preprocess


def test_load_rgb_applies_exif_orientation(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    img = Image.fromarray(arr, "RGB")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path / "rotated.jpg", img, format="JPEG", exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)

    out = load_rgb(path)

    assert out.size == (20, 40) and out.mode == "RGB"
    top, bottom = np.asarray(out)[5, 10], np.asarray(out)[35, 10]
    assert top[0] > 200 and top[2] < 60  # the red left edge is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_load_rgb_flattens_transparency_onto_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[...] = (200, 10, 10, 255)
    arr[0, 0] = (10, 20, 30, 0)  # fully transparent
    path = _save(tmp_path / "alpha.png", Image.fromarray(arr, "RGBA"))
    out = load_rgb(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((2, 2)) == (200, 10, 10)


def test_load_rgb_flattens_palette_transparency_onto_white(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 128, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)
    path = _save(tmp_path / "p.png", img, transparency=0)
    out = load_rgb(path)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((3, 3)) == (0, 128, 0)


def test_load_rgb_scales_16_bit_to_8_bit(tmp_path):
    arr = np.array([[65535, 32768], [0, 200]], np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(arr))
    out = np.asarray(load_rgb(path))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 255).all()
    assert (np.abs(out[0, 1].astype(int) - 128) <= 1).all()
    assert (out[1, 0] == 0).all()
    assert (out[1, 1] == 1).all()  # 200/65535 of full scale, not 200/255


def test_load_rgb_scales_a_dark_16_bit_image_by_its_bit_depth(tmp_path):
    # every value fits in 8 bits, but the file is 16-bit: 200/65535 is nearly black
    path = _save(tmp_path / "dark.png", Image.fromarray(np.full((4, 4), 200, np.uint16)))
    with Image.open(path) as im:
        assert im.mode == "I;16"
    assert (np.asarray(load_rgb(path)) == 1).all()


def test_load_rgb_refuses_more_than_max_pixels(tmp_path):
    path = _save(tmp_path / "x.png", _noise(1, (10, 10)))
    with pytest.raises(Image.DecompressionBombError, match="100 pixels exceeds the limit of 99"):
        load_rgb(path, max_pixels=99)
    assert load_rgb(path, max_pixels=100).size == (10, 10)


@pytest.mark.parametrize("size", [(300, 90), (90, 300), (1, 1), (224, 224)])
def test_preprocess_output_shape(size):
    prep = Preprocessing()
    out = preprocess(_noise(5, size), prep)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_preprocess_centre_crops_wide_and_tall_images():
    prep = Preprocessing(crop_size=32, resize_size=32, interpolation="nearest")
    bands = np.zeros((32, 96, 3), np.uint8)
    bands[:, :32] = (255, 0, 0)
    bands[:, 32:64] = (0, 255, 0)
    bands[:, 64:] = (0, 0, 255)
    wide = preprocess(Image.fromarray(bands, "RGB"), prep)
    tall = preprocess(Image.fromarray(np.ascontiguousarray(bands.transpose(1, 0, 2)), "RGB"), prep)
    for out in (wide, tall):
        assert out.shape == (32, 32, 3)
        assert (out == (0, 255, 0)).all()  # only the middle band survives the centre crop


def test_preprocess_resizes_the_shorter_side():
    prep = Preprocessing(crop_size=8, resize_size=8, interpolation="nearest")
    img = Image.new("RGB", (64, 64), (9, 99, 199))
    out = preprocess(img, prep)
    assert out.shape == (8, 8, 3) and (out == (9, 99, 199)).all()


def test_load_for_model_is_deterministic_and_matches_the_pipeline(tmp_path):
    path = _save(tmp_path / "x.jpg", _noise(3, (120, 80)), format="JPEG")
    prep = Preprocessing(crop_size=48, resize_size=56)
    first, second = load_for_model(path, prep), load_for_model(path, prep)
    assert first.shape == (48, 48, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, preprocess(load_rgb(path, draft_size=56), prep))


def test_preprocessing_round_trips_through_json():
    prep = Preprocessing(crop_size=96, resize_size=112, interpolation="bicubic")
    back = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert back == prep and isinstance(back.mean, tuple)


def test_batch_to_float_is_nchw_in_unit_range():
    a = np.full((4, 5, 3), 255, np.uint8)
    b = np.zeros((4, 5, 3), np.uint8)
    batch = batch_to_float([a, b])
    assert batch.shape == (2, 3, 4, 5) and batch.dtype == np.float32
    assert batch[0].min() == 1.0 and batch[1].max() == 0.0
    assert batch.flags["C_CONTIGUOUS"]


# --------------------------------------------------------------------------- split


def _samples(counts: dict[str, int], split_name: str | None = None) -> list[Sample]:
    return [
        Sample(Path(f"{split_name or 'all'}/{label}/{i}.png"), label, split_name)
        for label, n in counts.items()
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "n, frac, expected",
    [(10, 0.2, 2), (3, 0.2, 1), (2, 0.2, 1), (1, 0.2, 0), (3, 0.9, 2), (50, 0.3, 15), (7, 0.5, 4)],
)
def test_split_is_stratified_with_clamped_counts(n, frac, expected):
    samples = _samples({"x": n, "y": 20})
    train, val, test = split(samples, val_fraction=frac, seed=0)
    val_counts = Counter(s.label for s in val)
    assert val_counts["x"] == expected
    assert val_counts["y"] == min(max(1, round(20 * frac)), 19)
    assert test == []
    assert sorted(map(str, (s.path for s in train + val))) == sorted(str(s.path) for s in samples)
    assert not {s.path for s in train} & {s.path for s in val}


def test_split_single_image_class_stays_in_train():
    samples = _samples({"solo": 1, "many": 10})
    train, val, _ = split(samples, 0.2, seed=3)
    assert [s.label for s in train].count("solo") == 1
    assert "solo" not in {s.label for s in val}


def test_split_is_reproducible_per_seed():
    samples = _samples({"a": 40, "b": 40})
    first = split(samples, 0.25, seed=7)
    again = split(samples, 0.25, seed=7)
    other = split(samples, 0.25, seed=8)
    assert first == again
    assert {s.path for s in first[1]} != {s.path for s in other[1]}
    assert Counter(s.label for s in other[1]) == Counter(s.label for s in first[1])


def test_split_does_not_depend_on_input_order_of_classes():
    a, b = _samples({"a": 12}), _samples({"b": 12})
    v1 = {s.path for s in split(a + b, 0.25, seed=1)[1]}
    v2 = {s.path for s in split(b + a, 0.25, seed=1)[1]}
    assert v1 == v2


def test_split_val_folder_wins():
    train_s = _samples({"a": 5, "b": 5}, "train")
    val_s = _samples({"a": 1, "b": 1}, "val")
    test_s = _samples({"a": 2}, "test")
    train, val, test = split(train_s + val_s + test_s, val_fraction=0.5, seed=0)
    assert train == train_s and val == val_s and test == test_s


def test_split_test_folder_is_kept_apart_and_validation_is_carved_from_train():
    train_s = _samples({"a": 5, "b": 5}, "train")
    test_s = _samples({"a": 2, "b": 2}, "test")
    train, val, test = split(train_s + test_s, val_fraction=0.2, seed=0)
    assert test == test_s  # never turned into validation
    assert [s.label for s in val].count("a") == 1 and [s.label for s in val].count("b") == 1
    assert sorted(map(str, (s.path for s in train + val))) == sorted(str(s.path) for s in train_s)


def test_split_scanned_train_val_layout_end_to_end(tmp_path):
    for i in range(3):
        _save(tmp_path / "train" / "a" / f"{i}.png", _noise(i))
        _save(tmp_path / "train" / "b" / f"{i}.png", _noise(10 + i))
    _save(tmp_path / "val" / "a" / "v.png", _noise(20))
    _save(tmp_path / "val" / "b" / "v.png", _noise(21))
    train, val, test = split(audit(scan(tmp_path)).samples)
    assert len(train) == 6 and test == []
    assert sorted((s.label, s.path.name) for s in val) == [("a", "v.png"), ("b", "v.png")]


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_invalid_val_fraction(bad):
    with pytest.raises(DataError, match="val_fraction"):
        split(_samples({"a": 5, "b": 5}), val_fraction=bad)


def test_audit_remembers_verdicts_by_content(tmp_path, monkeypatch):
    """A second audit with the same memo decodes nothing and reports the same."""
    from automl_tl.data import audit as data_mod
    from automl_tl.features.memo import Memo

    root = tmp_path / "data"
    _good_classes(root, ("a", "b"), per_class=3)
    _write(root / "a" / "broken.png", b"not a png at all")
    Image.new("L", (40, 30), 100).save(root / "b" / "grey.png")
    memo = Memo(tmp_path / "cache")
    first = audit(scan(root), memo=memo)

    def no_decoding(*_):
        raise AssertionError("decoded a file whose verdict was remembered")

    monkeypatch.setattr(data_mod, "_decode_check", no_decoding)
    second = audit(scan(root), memo=Memo(tmp_path / "cache"))
    assert second.to_dict() == first.to_dict()
    assert first.conversions == {"L->RGB": 1}
    assert [reason for _, reason in second.problems] == ["not an image Pillow can read"]
    # A changed file is a new digest: checked again, not trusted from memory.
    _write(root / "a" / "broken.png", b"still not a png")
    with pytest.raises(AssertionError, match="remembered"):
        audit(scan(root), memo=Memo(tmp_path / "cache"))

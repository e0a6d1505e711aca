"""Hostile inputs: every kind is generated here and its expected fate asserted.

Per-file kinds (tests/hostile_corpus.py) are either used (and counted as a conversion when not
RGB), skipped with a listed reason while the run goes on, or ignored (never scanned).
Folder-level and CSV kinds are below, then one end-to-end `automl-tl fit` + `predict` on a
folder holding every per-file kind at once.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from automl_tl.cli import main as cli_main
from automl_tl.core.console import Console
from automl_tl.core.errors import DataError
from automl_tl.data.audit import audit
from automl_tl.data.preprocess import Preprocessing, batch_to_float, load_for_model, preprocess
from automl_tl.data.scan import scan

from .hostile_corpus import KINDS, noise, write_good

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = "running as root: root reads a chmod 000 file or folder anyway"
CLI = str(Path(sys.executable).parent / "automl-tl")
# automl_tl.data.preprocess silences it at import; pytest's per-test warning capture undoes that
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

# --------------------------------------------------------------------------- helpers


def _audit(root_or_csv: Path, **kwargs):
    """audit(scan(...)) with the console captured: (report, console text)."""
    buf = io.StringIO()
    report = audit(scan(root_or_csv), console=Console(quiet=True, stream=buf), **kwargs)
    return report, buf.getvalue()


def _reasons(report) -> dict[str, str]:
    return {str(p): r for p, r in report.problems}


def _used(report) -> set[str]:
    return {str(s.path) for s in report.samples}


def _cli(*args) -> tuple[int, str, str]:
    """Run the CLI in-process (clean-stop checks that never reach training)."""
    res = CliRunner().invoke(cli_main, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.stdout, res.stderr


def _assert_one_line_error(code: int, stderr: str, *needles: str) -> str:
    assert code != 0 and "Traceback" not in stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == errors[0]  # the last thing printed
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def test_the_corpus_has_at_least_30_kinds():
    names = [k.name for k in KINDS]
    assert len(names) == len(set(names))
    outcomes = Counter(k.outcome for k in KINDS)
    assert outcomes["used"] >= 10 and outcomes["skipped"] >= 10 and outcomes["ignored"] >= 5
    assert len(KINDS) + len(FOLDER_KINDS) + len(CSV_KINDS) >= 30


# --------------------------------------------------------------------------- per-file kinds


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_per_file_kind(tmp_path, kind):
    if kind.needs_non_root and IS_ROOT:
        pytest.skip(ROOT_SKIP)
    root = tmp_path / "data"
    good = write_good(root, per_class=3)
    subject = kind.write(root / "a")

    report, out = _audit(root)

    assert report.classes == ["a", "b"] and report.left_out_classes == []
    scanned = {str(s.path) for s in scan(root).samples}
    if kind.outcome == "ignored":
        assert str(subject) not in scanned
        assert report.scanned == len(good) and report.problems == [] and report.conversions == {}
        assert len(report.samples) == len(good)
    elif kind.outcome == "used":
        assert str(subject) in _used(report)
        assert report.problems == []
        assert report.conversions == ({kind.conversion: 1} if kind.conversion else {})
        assert len(report.samples) == len(good) + 1 + kind.extra_used
        if kind.check:
            kind.check(subject)
    else:
        assert kind.outcome == "skipped"
        assert str(subject) not in _used(report)
        reason = _reasons(report)[str(subject)]
        assert kind.reason in reason, reason
        assert [p for p, _ in report.problems] == [str(subject)]  # nothing else is blamed
        assert f"skipped {subject}: {reason}" in out  # listed on the console
        assert report.conversions == {}
        assert len(report.samples) == len(good) + kind.extra_used
        assert report.scanned == len(good) + 1 + kind.extra_used


def _resized_areas(monkeypatch) -> list[int]:
    """The pixel counts of every image Pillow is asked to resize to, from now on."""
    areas, real = [], Image.Image.resize

    def resize(self, size, *args, **kwargs):
        areas.append(size[0] * size[1])
        return real(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    return areas


# The largest intermediate image preprocessing may build: 16 x the resized square (256 px).
MAX_RESIZED = 16 * 256 * 256


def test_used_kinds_become_float_model_inputs_in_the_unit_range(tmp_path, monkeypatch):
    prep = Preprocessing()
    areas = _resized_areas(monkeypatch)
    for kind in (k for k in KINDS if k.outcome == "used"):
        (tmp_path / kind.name).mkdir()
        subject = kind.write(tmp_path / kind.name)
        arr = batch_to_float([load_for_model(subject, prep)])[0]
        assert arr.shape == (3, 224, 224) and arr.dtype == np.float32, kind.name
        assert 0.0 <= arr.min() and arr.max() <= 1.0, kind.name
        # 20000x8 once became a 640000x256 intermediate (2 s, 700 MB)
        assert max(areas) <= MAX_RESIZED, kind.name


def test_extreme_aspect_ratios_are_not_resized_whole_and_keep_their_pixels(monkeypatch):
    """20000x1 would have become a 5,120,000x256 (3.9 GB) intermediate image."""
    prep = Preprocessing()
    areas = _resized_areas(monkeypatch)
    for size in [(20_000, 1), (1, 20_000), (20_000, 8)]:
        assert preprocess(noise(1, size), prep).shape == (224, 224, 3)
    assert areas == [224 * 224] * 3  # only the centre crop's region is resampled
    monkeypatch.undo()
    # The shortcut samples what the full resize-then-crop gives (Pillow rounding aside).
    w, h = 4000, 40
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0), xx % 256, yy * 6], -1)
    img = Image.fromarray(smooth.astype(np.uint8), "RGB")
    nw = round(w * prep.resize_size / h)
    left, top = (nw - 224) // 2, (prep.resize_size - 224) // 2
    full = img.resize((nw, prep.resize_size), Image.Resampling.BILINEAR)
    expected = np.asarray(full.crop((left, top, left + 224, top + 224))).astype(int)
    assert np.abs(preprocess(img, prep).astype(int) - expected).max() <= 1


def test_the_real_image_above_max_pixels_is_a_valid_png(tmp_path):
    kind = next(k for k in KINDS if k.name == "real_image_above_max_pixels")
    path = kind.write(tmp_path)
    with Image.open(path) as im:
        assert im.size == (10_000, 8_950) and im.mode == "1"
        im.verify()  # chunks and CRCs are sound: a real image, refused for its size only
    assert path.stat().st_size < 100_000


# --------------------------------------------------------------------------- folder kinds

FOLDER_KINDS = [
    "folder symlink at the root looping to the root",
    "folder symlink at the root pointing above the root",
    "folder symlink in train/ looping to train/",
    "class folder symlinked from outside (followed)",
    "hidden and __MACOSX folders at the root",
    "empty class folder",
    "all-unusable class folder",
    "class folder of only ignored entries",
    "unreadable class folder",
    "one class only",
    "zero classes (loose files only)",
    "zero classes (only empty class folders)",
    "same image under two classes",
    "three copies within a class",
    "unicode and space class names",
]


@pytest.mark.parametrize(
    "link, target",
    [("loop", "."), ("up", ".."), ("train/loop", "."), ("train/up", "..")],
    ids=["root-to-root", "root-to-parent", "train-to-train", "train-to-root"],
)
def test_folder_symlink_loops_are_not_classes(tmp_path, link, target):
    root = tmp_path / "data"
    base = root / "train" if link.startswith("train/") else root
    good = write_good(base, per_class=3)
    os.symlink(target, root / link)

    report, out = _audit(root)

    # before the fix the loop became a class holding every image, and every image was then
    # dropped as "the same image under two classes"
    assert report.classes == ["a", "b"] and report.left_out_classes == []
    assert _used(report) == {str(p) for p in good}
    assert report.problems == [] and "LEFT OUT" not in out


def test_a_class_folder_symlinked_from_outside_is_followed(tmp_path):
    root = tmp_path / "data"
    write_good(root, per_class=2)
    elsewhere = tmp_path / "elsewhere" / "c"
    elsewhere.mkdir(parents=True)
    for i in range(2):
        noise(500 + i).save(elsewhere / f"{i}.png")
    os.symlink(elsewhere, root / "c")
    report, _ = _audit(root)
    assert report.classes == ["a", "b", "c"]
    assert Counter(s.label for s in report.samples) == {"a": 2, "b": 2, "c": 2}


def test_hidden_and_macosx_folders_at_the_root_are_not_classes(tmp_path):
    write_good(tmp_path, per_class=2)
    for i, name in enumerate((".ipynb_checkpoints", ".git", "__MACOSX", ".Trash-1000")):
        (tmp_path / name).mkdir()
        noise(600 + i).save(tmp_path / name / "x.png")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    manifest = scan(tmp_path)
    assert manifest.classes_seen == ["a", "b"] and len(manifest.samples) == 4


@pytest.mark.parametrize("what", ["empty", "all unusable", "only ignored entries"])
def test_a_class_without_usable_images_is_left_out_with_a_warning(tmp_path, what):
    write_good(tmp_path, per_class=2)
    c = tmp_path / "c"
    c.mkdir()
    if what == "all unusable":
        (c / "zero.jpg").write_bytes(b"")
        (c / "notes.png").write_text("not an image")
    elif what == "only ignored entries":
        (c / ".DS_Store").write_bytes(b"Bud1")
        noise(7).save(c / ".hidden.png")
        os.symlink("..", c / "loop")

    report, out = _audit(tmp_path)

    assert report.classes == ["a", "b"] and report.left_out_classes == ["c"]
    warnings = [ln for ln in out.splitlines() if "LEFT OUT" in ln]
    assert len(warnings) == 1 and "class 'c' has no usable images" in warnings[0]
    assert len(report.problems) == (2 if what == "all unusable" else 0)


@pytest.mark.skipif(IS_ROOT, reason=ROOT_SKIP)
def test_an_unreadable_class_folder_is_left_out(tmp_path):
    write_good(tmp_path, per_class=2)
    (tmp_path / "c").mkdir()
    noise(9).save(tmp_path / "c" / "x.png")
    (tmp_path / "c").chmod(0)
    try:
        report, out = _audit(tmp_path)
    finally:
        (tmp_path / "c").chmod(0o755)
    assert report.left_out_classes == ["c"] and "LEFT OUT" in out


def test_one_class_only_is_a_clean_stop(tmp_path):
    data = tmp_path / "data"
    write_good(data, classes=("only",), per_class=3)
    with pytest.raises(DataError, match=r"need at least 2 classes .* found 1 \(only\)"):
        _audit(data)
    code, _, err = _cli("fit", data, "--out", tmp_path / "run", "-q")
    _assert_one_line_error(code, err, "need at least 2 classes", "add a folder per class")


def test_zero_classes_is_a_clean_stop(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    noise(1).save(loose / "x.png")
    (loose / ".hidden").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan(loose)
    code, _, err = _cli("fit", loose, "--out", tmp_path / "r1", "-q")
    _assert_one_line_error(code, err, "no class folders", str(loose))

    empty = tmp_path / "empty"
    for c in ("a", "b"):
        (empty / c).mkdir(parents=True)
    with pytest.raises(DataError, match=r"found 0 \(none\)"):
        _audit(empty)
    code, _, err = _cli("fit", empty, "--out", tmp_path / "r2", "-q")
    _assert_one_line_error(code, err, "need at least 2 classes", "found 0")


def test_the_same_image_under_two_classes_is_dropped_from_both(tmp_path):
    write_good(tmp_path, per_class=3)
    in_a = tmp_path / "a" / "shared.png"
    noise(77).save(in_a)
    in_b = tmp_path / "b" / "also_shared.png"
    in_b.write_bytes(in_a.read_bytes())

    report, _ = _audit(tmp_path)

    reasons = _reasons(report)
    assert reasons[str(in_a)] == reasons[str(in_b)] == "same image under classes a, b"
    assert len(report.problems) == 2
    assert Counter(s.label for s in report.samples) == {"a": 3, "b": 3}


def test_three_copies_within_a_class_keep_one(tmp_path):
    write_good(tmp_path, per_class=3)
    first = tmp_path / "a" / "copy1.png"
    noise(88).save(first)
    for name in ("copy2.png", "sub/copy3.png"):
        (tmp_path / "a" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "a" / name).write_bytes(first.read_bytes())

    report, _ = _audit(tmp_path)

    assert str(first) in _used(report)
    assert sorted(report.problems) == sorted(
        (str(tmp_path / "a" / n), f"duplicate of {first}") for n in ("copy2.png", "sub/copy3.png")
    )
    assert Counter(s.label for s in report.samples) == {"a": 4, "b": 3}


def test_unicode_and_space_class_names_are_kept(tmp_path):
    names = ("chat noir 猫", " spaced ", "é")
    write_good(tmp_path, classes=names, per_class=2)
    report, _ = _audit(tmp_path)
    assert report.classes == sorted(names) and report.problems == []
    json.dumps(report.to_dict(), ensure_ascii=False)


# --------------------------------------------------------------------------- CSV kinds

CSV_KINDS = [
    "missing paths",
    "empty label, empty path, blank label, one column",
    "label naming only missing files",
    "../ path outside the root",
    "absolute path outside the root",
    "absolute path inside the root",
    "a path that is a folder",
    "NUL byte in a path",
    "byte-order mark",
    "wrong header (filename,class)",
    "columns swapped (label,path)",
    "not UTF-8 (Latin-1)",
    "a PNG named labels.csv",
    "a field over the csv module's limit",
    "one file under two labels",
    "the same row twice",
    "quoted path with a comma, extra columns",
    "empty CSV",
]


@pytest.fixture
def csv_root(tmp_path):
    """tmp/ds/imgs/{a0,a1,b0,b1}.png and an image outside tmp/ds."""
    ds = tmp_path / "ds"
    (ds / "imgs").mkdir(parents=True)
    for i, name in enumerate(("a0", "a1", "b0", "b1")):
        noise(300 + i).save(ds / "imgs" / f"{name}.png")
    noise(399).save(tmp_path / "outside.png")
    return ds


_GOOD_ROWS = "imgs/a0.png,a\nimgs/a1.png,a\nimgs/b0.png,b\nimgs/b1.png,b\n"


def _csv(ds: Path, text: str | bytes, name: str = "labels.csv") -> Path:
    path = ds / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_csv_missing_paths_and_malformed_rows(csv_root):
    path = _csv(
        csv_root,
        "path,label\n"
        + _GOOD_ROWS
        + "imgs/missing.png,a\n"  # line 6
        + "imgs/b0.png,\n"  # 7: empty label
        + ",a\n"  # 8: empty path
        + "imgs/b1.png,   \n"  # 9: blank label
        + "just-one-column\n",  # 10
    )
    report, out = _audit(path)
    assert _reasons(report)["imgs/missing.png"] == "file not found"
    for line in (7, 8, 9, 10):
        assert _reasons(report)[f"{path}:{line}"] == "row is not 'path,label'"
    assert len(report.problems) == 5 and len(report.samples) == 4
    assert "skipped imgs/missing.png: file not found" in out


def test_csv_label_naming_only_missing_files_is_a_left_out_class(csv_root):
    path = _csv(csv_root, "path,label\n" + _GOOD_ROWS + "imgs/ghost.png,ghost\n")
    report, out = _audit(path)
    assert report.classes == ["a", "b"] and report.left_out_classes == ["ghost"]
    assert "class 'ghost' has no usable images and is LEFT OUT" in out


def test_csv_paths_outside_the_root_are_refused(csv_root):
    outside = csv_root.parent / "outside.png"
    inside_abs = (csv_root / "imgs" / "a0.png").resolve()
    path = _csv(
        csv_root,
        "path,label\n"
        + "imgs/a1.png,a\nimgs/b0.png,b\nimgs/b1.png,b\n"
        + "../outside.png,a\n"
        + f"{outside},b\n"
        + f"{inside_abs},a\n"
        + "imgs/../../outside.png,a\n",
    )
    report, _ = _audit(path)
    reasons = _reasons(report)
    for rel in ("../outside.png", str(outside), "imgs/../../outside.png"):
        assert reasons[rel].startswith("path is outside the CSV's folder"), rel
    assert len(report.problems) == 3
    assert inside_abs in {s.path for s in report.samples}  # an absolute path inside is fine
    assert len(report.samples) == 4


def test_csv_folder_nul_and_looping_paths_are_problems_not_crashes(csv_root):
    os.symlink("loop.png", csv_root / "imgs" / "loop.png")
    rows = "imgs,a\nimgs/a\x00.png,b\nimgs/loop.png,b\n"
    path = _csv(csv_root, "path,label\n" + _GOOD_ROWS + rows)
    report, _ = _audit(path)
    reasons = _reasons(report)
    assert reasons["imgs"] == "file not found"
    assert reasons["imgs/a\x00.png"] == "invalid path: embedded null byte"
    assert reasons["imgs/loop.png"].startswith("invalid path: Symlink loop")
    assert len(report.problems) == 3
    assert len(report.samples) == 4


@pytest.mark.parametrize(
    "header",
    ["\ufeffpath,label", "PATH , Label", "filename,class", "image,category"],
    ids=["bom", "case-and-space", "filename-class", "image-category"],
)
def test_csv_headers_are_not_data(csv_root, header):
    path = _csv(csv_root, header + "\n" + _GOOD_ROWS)
    manifest = scan(path)
    # before the fix "filename,class" became a missing file and a phantom LEFT OUT class
    assert manifest.problems == [] and manifest.classes_seen == ["a", "b"]
    assert len(manifest.samples) == 4


def test_csv_without_header_keeps_its_first_row(csv_root):
    manifest = scan(_csv(csv_root, _GOOD_ROWS))
    assert len(manifest.samples) == 4 and manifest.problems == []
    # a missing first file whose label other rows use is a data row, reported as such
    manifest = scan(_csv(csv_root, "imgs/gone.png,a\n" + _GOOD_ROWS))
    assert manifest.problems == [("imgs/gone.png", "file not found")]


def test_csv_with_swapped_columns_is_a_clean_stop(csv_root):
    rows = "".join(f"{line.split(',')[1]},{line.split(',')[0]}\n" for line in _GOOD_ROWS.split())
    path = _csv(csv_root, "label,path\n" + rows)
    with pytest.raises(DataError, match="found 0"):
        _audit(path)
    assert {r for _, r in scan(path).problems} == {"file not found"}


@pytest.mark.parametrize(
    "content, needle",
    [
        ("path,label\nimgs/caf\xe9.png,a\n".encode("latin-1"), "UTF-8"),
        ("path,label\nimgs/a0.png,a\n".encode("utf-16"), "UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "UTF-8"),
        (b"path,label\n" + b"x" * 200_000 + b".png,a\n", "field larger than field limit"),
    ],
    ids=["latin-1", "utf-16", "png-bytes", "over-long-field"],
)
def test_an_unreadable_csv_is_a_clean_stop(csv_root, tmp_path, content, needle):
    path = _csv(csv_root, content)
    with pytest.raises(DataError, match="cannot read .* as a CSV file") as exc:
        scan(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)
    code, _, err = _cli("fit", path, "--out", tmp_path / "run", "-q")
    _assert_one_line_error(code, err, "as a CSV file", "UTF-8")


def test_csv_one_file_under_two_labels_and_a_repeated_row(csv_root):
    path = _csv(
        csv_root, "path,label\n" + _GOOD_ROWS + "imgs/a0.png,b\nimgs/b1.png,b\n"
    )  # a0 also under b; b1 listed twice under b
    report, _ = _audit(path)
    a0, b1 = str((csv_root / "imgs/a0.png").resolve()), str((csv_root / "imgs/b1.png").resolve())
    reasons = [(p, r) for p, r in report.problems]
    assert reasons.count((a0, "same image under classes a, b")) == 2
    assert (b1, f"duplicate of {b1}") in reasons
    assert sorted(s.path.name for s in report.samples) == ["a1.png", "b0.png", "b1.png"]


def test_csv_quoted_comma_path_and_extra_columns(csv_root):
    noise(555).save(csv_root / "imgs" / "x, y.png")
    path = _csv(
        csv_root,
        'path,label,comment\n"imgs/x, y.png",a,first\n' + _GOOD_ROWS.replace("\n", ",note\n"),
    )
    report, _ = _audit(path)
    assert report.problems == [] and len(report.samples) == 5
    assert {s.path.name for s in report.samples if s.label == "a"} == {
        "x, y.png",
        "a0.png",
        "a1.png",
    }


def test_an_empty_csv_is_a_clean_stop(csv_root, tmp_path):
    path = _csv(csv_root, b"")
    with pytest.raises(DataError, match=r"found 0 \(none\)"):
        _audit(path)
    code, _, err = _cli("fit", path, "--out", tmp_path / "run", "-q")
    _assert_one_line_error(code, err, "need at least 2 classes")


# --------------------------------------------------------------------------- end to end


def _run(*args, timeout=300):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hostile_fit(tmp_path_factory):
    """Every per-file kind in one 2-class folder (8 good 64x64 images per class), fitted."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "data"
    write_good(root, per_class=8, size=(64, 64))
    kinds = [k for k in KINDS if not (k.needs_non_root and IS_ROOT)]
    subjects = {k.name: k.write(root / ("a" if i % 2 == 0 else "b")) for i, k in enumerate(kinds)}
    out = base / "run"
    res = _run("fit", root, "--out", out, "--case", "1", "--epochs", "3", "--json")
    return root, out, kinds, subjects, res


def test_fit_on_every_hostile_kind_at_once(hostile_fit):
    root, out, kinds, subjects, res = hostile_fit
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    summary = json.loads(res.stdout)
    assert Path(summary["model"]).is_file() and summary["export_check"]["passed"] is True
    assert summary["classes"] == ["a", "b"] and summary["left_out_classes"] == []

    used = [k for k in kinds if k.outcome == "used"]
    skipped = [k for k in kinds if k.outcome == "skipped"]
    n_used = 16 + len(used) + sum(k.extra_used for k in kinds)
    report = json.loads((out / "audit.json").read_text())
    assert report["usable"] == summary["images_used"] == n_used
    assert report["files_scanned"] == n_used + len(skipped)
    assert summary["files_skipped"] == len(skipped) == len(report["problems"])
    listed = {p["path"]: p["reason"] for p in report["problems"]}
    for k in skipped:
        assert k.reason in listed[str(subjects[k.name])], k.name
        assert f"skipped {subjects[k.name]}" in res.stderr, k.name
    assert report["conversions"] == dict(Counter(k.conversion for k in used if k.conversion))
    ignored = {str(subjects[k.name]) for k in kinds if k.outcome == "ignored"}
    assert not ignored & set(listed)


def test_predict_on_the_hostile_folder_reports_bad_files_and_labels_the_rest(hostile_fit):
    root, out, kinds, subjects, fit = hostile_fit
    assert fit.returncode == 0, fit.stderr[-3000:]
    res = _run("predict", out / "model.onnx", root, "--json", "-k", "2", timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    rows = {r["path"]: r for r in map(json.loads, res.stdout.splitlines())}
    for k in kinds:
        path = str(subjects[k.name])
        if k.predict == "absent":
            assert path not in rows, k.name
        elif k.predict == "error":
            assert rows[path]["error"].startswith("cannot read image"), k.name
        else:
            (first, p1), (second, p2) = rows[path]["top"]  # both classes, most probable first
            assert sorted([first, second]) == ["a", "b"] and p1 >= p2, k.name
            assert p1 + p2 == pytest.approx(1.0, abs=1e-5), k.name
    n_errors = sum(k.predict == "error" for k in kinds)
    assert sum("error" in r for r in rows.values()) == n_errors
    assert f"{n_errors} of {len(rows)} files could not be read" in res.stderr

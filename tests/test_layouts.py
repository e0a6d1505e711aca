"""Folder layouts as datasets are published (Kaggle Training/Testing, train/valid/test, upper
case, wrapper folders, ambiguous forms), built from real PNGs of scikit-learn's digits; the
test split kept apart from model selection; and files leaked across splits reported."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import automl_tl.data.dataset as dataset
import automl_tl.pipeline as pipeline
import automl_tl.train.run as train_run
from automl_tl import AutoTransfer
from automl_tl.cli import main as cli_main
from automl_tl.core.console import Console
from automl_tl.core.errors import DataError
from automl_tl.data.audit import audit
from automl_tl.data.demo import write_digits
from automl_tl.data.scan import scan
from automl_tl.data.split import split

DIGITS = ("0", "1", "7")


def _layout(root: Path, parts: dict[str, int], tmp: Path) -> Path:
    """root/<part>/<digit>/*.png with `parts[part]` distinct real digit images per class
    ("" as a part name puts the class folders straight into root)."""
    pool = write_digits(tmp / "pool", per_class=sum(parts.values()), digits=(0, 1, 7))
    for digit in DIGITS:
        files = sorted((pool / digit).iterdir())
        for part, n in parts.items():
            dest = root / part / digit
            dest.mkdir(parents=True, exist_ok=True)
            for f in files[:n]:
                shutil.move(f, dest / f.name)
            files = files[n:]
    shutil.rmtree(pool)
    return root


def _read(root: Path, **kwargs):
    """(manifest, audit report, console text)."""
    buf = io.StringIO()
    manifest = scan(root)
    report = audit(manifest, console=Console(quiet=False, stream=buf), **kwargs)
    return manifest, report, buf.getvalue()


def _counts(samples) -> dict:
    out: dict = {}
    for s in samples:
        out[s.split] = out.get(s.split, 0) + 1
    return out


def _messages(manifest, level=None) -> list[str]:
    return [m["text"] for m in manifest.layout["messages"] if level is None or m["level"] == level]


# ----------------------------------------------------------------- known forms


def test_kaggle_training_testing_is_two_splits_not_two_classes(tmp_path):
    root = _layout(tmp_path / "brain", {"Training": 6, "Testing": 3}, tmp_path)
    manifest, report, text = _read(root)
    assert manifest.classes_seen == ["0", "1", "7"]
    assert _counts(manifest.samples) == {"train": 18, "test": 9}
    assert manifest.layout["splits"] == {"Testing": "test", "Training": "train"}
    note = (
        "layout: split folders Testing -> test, Training -> train; validation carved from "
        "train; test kept apart for one final evaluation"
    )
    assert _messages(manifest) == [note]
    assert note in text and "WARNING" not in text
    assert report.to_dict()["layout"]["messages"] == [{"level": "note", "text": note}]
    train, val, test = split(report.samples, val_fraction=0.2, seed=0)
    assert (len(train), len(val), len(test)) == (15, 3, 9)  # round(6 * 0.2) = 1 per class
    assert sorted(s.label for s in val) == ["0", "1", "7"]
    assert {s.split for s in test} == {"test"} and {s.split for s in train + val} == {"train"}


@pytest.mark.parametrize(
    "names, expected",
    [
        (("train", "valid", "test"), {"train": 12, "val": 6, "test": 3}),
        (("TRAIN", "VAL", None), {"train": 12, "val": 6}),
        (("Training", "Validation", "Eval"), {"train": 12, "val": 6, "test": 3}),
        (("train", "dev", "testing"), {"train": 12, "val": 6, "test": 3}),
        (("Train_set", "Val_set", "Test_set"), {"train": 12, "val": 6, "test": 3}),
    ],
)
def test_split_spellings_in_any_case(tmp_path, names, expected):
    tr, va, te = names
    parts = {tr: 4, va: 2, **({te: 1} if te else {})}
    manifest, report, _ = _read(_layout(tmp_path / "d", parts, tmp_path))
    assert manifest.classes_seen == ["0", "1", "7"]
    assert _counts(manifest.samples) == expected
    train, val, test = split(report.samples, seed=0)
    # a validation folder is used as it is, never topped up from train
    assert (len(train), len(val), len(test)) == (12, 6, expected.get("test", 0))
    assert _messages(manifest)[0].endswith(
        "validation from the val folder" + ("; test kept apart for one final evaluation" * bool(te))
    )


def test_a_wrapper_folder_is_stepped_into(tmp_path):
    inner = tmp_path / "download" / "data" / "brain_tumor"
    _layout(inner, {"Training": 4, "Testing": 2}, tmp_path)
    (tmp_path / "download" / "README.txt").write_text("from kaggle")  # not an image
    manifest, _, text = _read(tmp_path / "download")
    assert manifest.classes_seen == ["0", "1", "7"]
    assert _counts(manifest.samples) == {"train": 12, "test": 6}
    first = (
        f"layout: '{tmp_path / 'download'}' holds one folder only; reading the data in "
        "'data/brain_tumor'"
    )
    assert _messages(manifest, "note")[0] == first and first in text


def test_a_wrapper_around_class_folders(tmp_path):
    _layout(tmp_path / "zip" / "digits", {"": 3}, tmp_path)
    manifest, _, _ = _read(tmp_path / "zip")
    assert manifest.classes_seen == ["0", "1", "7"] and _counts(manifest.samples) == {None: 9}
    assert manifest.layout["form"] == "classes"
    assert _messages(manifest) == [
        f"layout: '{tmp_path / 'zip'}' holds one folder only; reading the data in 'digits'"
    ]


def test_a_split_folder_nested_in_itself(tmp_path):
    _layout(tmp_path / "d" / "train", {"train": 4}, tmp_path)
    _layout(tmp_path / "d" / "test", {"test": 2}, tmp_path / "t")
    manifest, _, _ = _read(tmp_path / "d")
    assert manifest.classes_seen == ["0", "1", "7"]
    assert _counts(manifest.samples) == {"train": 12, "test": 6}


# ----------------------------------------------------------- ambiguous forms


def test_test_folder_alone_is_the_data_with_no_test_split(tmp_path):
    manifest, report, text = _read(_layout(tmp_path / "d", {"test": 5}, tmp_path))
    assert manifest.classes_seen == ["0", "1", "7"] and _counts(manifest.samples) == {None: 15}
    warning = (
        "layout: the only labelled folder is the test split 'test'; it is used for training "
        "with validation carved from it, so there is no test split; add a train/ folder beside "
        "'test' to keep it for testing"
    )
    assert _messages(manifest, "warning") == [warning] and f"WARNING: {warning}" in text
    train, val, test = split(report.samples, seed=0)
    assert (len(train), len(val), len(test)) == (12, 3, 0)


def test_val_and_test_without_train_trains_on_val(tmp_path):
    manifest, report, _ = _read(_layout(tmp_path / "d", {"val": 5, "test": 2}, tmp_path))
    assert _counts(manifest.samples) == {"train": 15, "test": 6}
    assert _messages(manifest, "warning") == [
        f"layout: no train folder in '{tmp_path / 'd'}'; val is used for training with "
        "validation carved from it and test kept apart; name the training folder 'train' to "
        "change this"
    ]
    train, val, test = split(report.samples, seed=0)
    assert (len(train), len(val), len(test)) == (12, 3, 6)


def test_a_split_folder_beside_a_class_folder_leaves_the_class_out_with_a_warning(tmp_path):
    root = _layout(tmp_path / "d", {"train": 3, "test": 1}, tmp_path)
    _layout(root, {"bus": 2}, tmp_path / "b")  # d/bus/<digit>/: an extra folder, no split
    manifest, _, text = _read(root)
    assert manifest.classes_seen == ["0", "1", "7"]
    assert _counts(manifest.samples) == {"train": 9, "test": 3}
    warning = (
        f"layout: '{root}' holds split folders and other folders ('bus'); the other folders "
        "are LEFT OUT; move them into a split folder to use them"
    )
    assert _messages(manifest, "warning") == [warning] and warning in text


def test_a_class_named_train_holding_images_stays_a_class(tmp_path):
    root = _layout(tmp_path / "vehicles", {"": 3}, tmp_path)
    (root / "7").rename(root / "train")  # classes 0, 1 and "train", images directly inside
    manifest, _, _ = _read(root)
    assert manifest.classes_seen == ["0", "1", "train"] and _counts(manifest.samples) == {None: 9}
    assert _messages(manifest, "note") == [
        f"layout: 'train' in '{root}' holds images directly, so it is read as a class, "
        "not as a split"
    ]


def test_split_folders_without_class_folders_are_a_clean_stop(tmp_path):
    root = tmp_path / "d"
    for part in ("train", "test"):
        (root / part).mkdir(parents=True)
        shutil.copy(
            next((_layout(tmp_path / part, {"": 1}, tmp_path / part) / "0").iterdir()),
            root / part / "a.png",
        )
    with pytest.raises(DataError, match="no class sub-folders, so the images have no labels"):
        scan(root)


def test_an_unlabelled_test_folder_beside_a_labelled_train_is_left_out(tmp_path):
    root = _layout(tmp_path / "d", {"train": 3}, tmp_path)
    (root / "test").mkdir()
    shutil.copy(next((root / "train" / "0").iterdir()), root / "test" / "unknown.png")
    manifest, _, _ = _read(root)
    assert _counts(manifest.samples) == {"train": 9}
    assert _messages(manifest, "warning") == [
        "layout: split folder 'test' holds no class sub-folders, so its images have no "
        "labels and are LEFT OUT; put them in 'test/<class>/'"
    ]


def test_fold_folders_are_read_as_classes_with_a_warning(tmp_path):
    root = _layout(tmp_path / "d", {"fold1": 2, "fold2": 2}, tmp_path)
    manifest, _, text = _read(root)
    assert manifest.classes_seen == ["fold1", "fold2"]
    warning = (
        "layout: class folder 'fold1' holds sub-folders ('0', '1', '7'); each of the 2 folders "
        f"in '.' is read as one class with every image below it; if the sub-folders are the "
        f"classes, point fit at '{root / 'fold1'}' or move them up one level"
    )
    assert _messages(manifest, "warning") == [warning] and f"WARNING: {warning}" in text


def test_class_folders_with_image_sub_folders_get_a_warning(tmp_path):
    root = _layout(tmp_path / "d", {"": 4}, tmp_path)
    (root / "1" / "extra").mkdir()
    for f in sorted((root / "1").glob("*.png"))[:2]:
        f.rename(root / "1" / "extra" / f.name)
    manifest, _, _ = _read(root)
    assert manifest.classes_seen == ["0", "1", "7"] and _counts(manifest.samples) == {None: 12}
    (warning,) = _messages(manifest, "warning")
    assert warning.startswith("layout: class folder '1' holds sub-folders ('extra')")


def test_the_real_hymenoptera_layout_reads_quietly():
    from .helpers import shared_dataset

    manifest = scan(shared_dataset("hymenoptera_data"))
    assert manifest.classes_seen == ["ants", "bees"]
    assert set(_counts(manifest.samples)) == {"train", "val"}
    assert _messages(manifest, "warning") == []


# ----------------------------------------------------------------- leakage


def test_a_training_image_copied_into_test_is_counted(tmp_path):
    root = _layout(tmp_path / "d", {"train": 4, "val": 2, "test": 2}, tmp_path)
    shutil.copy(root / "train" / "0" / "0000.png", root / "test" / "0" / "copy.png")
    shutil.copy(root / "train" / "1" / "0001.png", root / "val" / "1" / "copy.png")
    _, report, text = _read(root)
    assert report.leakage == {"test": {"train": 1}, "val": {"train": 1}}
    expected = [
        "1 validation image was byte-identical to training images and was left out of the "
        "validation set",
        "1 test image was byte-identical to training images and was left out of the test set",
    ]
    assert report.to_dict()["leakage_messages"] == expected
    assert all(f"WARNING: leakage: {m}" in text for m in expected)
    assert _counts(report.samples) == {"train": 12, "val": 6, "test": 6}


# --------------------------------------------------------------------- fit


@pytest.fixture(scope="module")
def train_test_fit(tmp_path_factory):
    """One fit on Training/Testing digits with one training image copied into Testing, the
    splits the engine made and everything the head strategy and the analysis were given."""
    tmp = tmp_path_factory.mktemp("layouts-fit")
    root = _layout(tmp / "data", {"Training": 10, "Testing": 4}, tmp)
    shutil.copy(root / "Training" / "7" / "0002.png", root / "Testing" / "7" / "leak.png")
    seen: dict = {}
    mp = pytest.MonkeyPatch()

    def spy_split(*args, **kwargs):
        seen["parts"] = split(*args, **kwargs)
        return seen["parts"]

    def spy_analyse(*args, **kwargs):
        seen["analysis"] = real_analyse(*args, **kwargs)
        return seen["analysis"]

    def spy_task(*args, **kwargs):
        seen["task"] = real_task(*args, **kwargs)
        return seen["task"]

    real_analyse, real_task = pipeline.analyse, train_run.HeadTask
    mp.setattr(dataset, "split", spy_split)
    mp.setattr(pipeline, "analyse", spy_analyse)
    mp.setattr(train_run, "HeadTask", spy_task)
    try:
        lite0 = "efficientnet_lite0"  # the layout, not the backbone search
        model = AutoTransfer(backbone=lite0, epochs=30, out=tmp / "run", quiet=True).fit(root)
    finally:
        mp.undo()
    return model, seen, root, tmp


def test_fit_carves_validation_from_train_and_tests_once(train_test_fit):
    model, seen, root, _ = train_test_fit
    train, val, test = seen["parts"]
    assert (len(train), len(val), len(test)) == (24, 6, 12)  # 2 of 10 per class held out
    training = {p.resolve() for p in (root / "Training").rglob("*.png")}
    testing = {p.resolve() for p in (root / "Testing").rglob("*.png")}
    assert {s.path.resolve() for s in train + val} == training
    assert {s.path.resolve() for s in test} == testing - {(root / "Testing/7/leak.png").resolve()}
    # nothing that chooses anything saw a test image
    task, analysis = seen["task"], seen["analysis"]
    assert (len(task.y_train), len(task.y_val)) == (24, 6)
    assert {s.path for s in analysis.samples} <= {s.path for s in train + val}
    m = model.metrics_
    assert m["test"]["n"] == 12 and m["validation"]["n"] == 6
    assert m["split"]["model_chosen_on"] == "validation"
    assert m["split"]["validation_source"] == (
        "carved from the training images (20% of each class, seed 0)"
    )


def test_fit_reports_test_and_leakage_in_the_run_folder(train_test_fit):
    model, _, _, _ = train_test_fit
    run = Path(model.run_dir_)
    metrics = json.loads((run / "metrics.json").read_text())
    audit_json = json.loads((run / "audit.json").read_text())
    leak = "1 test image was byte-identical to training images and was left out of the test set"
    assert metrics["test"]["n"] == 12 and metrics["split"]["test"] == 12
    assert metrics["split"]["leakage"] == {"test": {"train": 1}} == audit_json["leakage"]
    assert metrics["split"]["leakage_messages"] == [leak]
    assert audit_json["layout"]["splits"] == {"Testing": "test", "Training": "train"}
    html = (run / "report.html").read_text()
    assert "The model was chosen on the <b>validation</b> split (n=6, carved from" in html
    assert "the <b>test</b> split (n=12) was held out and evaluated once at the end" in html
    assert f"Leakage: {leak}." in html
    assert "layout: split folders Testing -&gt; test, Training -&gt; train" in html


def test_cli_summary_prints_test_beside_validation(train_test_fit):
    _, _, root, tmp = train_test_fit
    res = CliRunner().invoke(
        cli_main,
        ["fit", str(root), "--epochs", "30", "--out", str(tmp / "cli-run"), "-q"]
        + ["--backbone", "efficientnet_lite0"],
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert (
        "on 6 images (carved from the training images (20% of each class, seed 0); chose "
        "the model)" in lines[0]
    )
    assert lines[1].startswith("test accuracy ") and lines[1].endswith(
        "on 12 images (held out, evaluated once after the model was chosen)"
    )
    assert lines[2] == (
        "leakage: 1 test image was byte-identical to training images and was left out of "
        "the test set"
    )

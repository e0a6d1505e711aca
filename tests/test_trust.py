"""What the exported model knows of its limits: calibration, the OOD p-value, the shift lines,
self-describing metadata, and the Predictor's one fast path (issue #20)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch

from automl_tl.core.stats import (
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from automl_tl.data.files import expand_paths
from automl_tl.export.predictor import Predictor
from automl_tl.export.trust import ALPHA, _shift_lines
from automl_tl.train.outputs import ModelOutputs, conformal_pvalue, knn_similarity

from .helpers import assert_one_line_error, run, shared_dataset


# ---------------------------------------------------------------- statistics, by hand
def test_ece_nll_and_bins_match_a_hand_computed_example():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 1, 1, 0])
    # bins of width 1/15: 0.9 -> [0.8667, 0.9333) acc 1; 0.8 -> [0.8, 0.8667) acc 0;
    # 0.7 -> [0.6667, 0.7333) acc 1; 0.6 -> [0.6, 0.6667) acc 1
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4
    assert expected_calibration_error(probs, y) == pytest.approx(expected)
    assert [b["n"] for b in calibration_bins(probs, y)] == [1, 1, 1, 1]
    nll = -np.mean(np.log([0.9, 0.2, 0.7, 0.6]))
    assert negative_log_likelihood(np.log(probs), y) == pytest.approx(nll)


def test_temperature_scaling_undoes_overconfidence():
    """Logits drawn from a calibrated model, then multiplied by 4: the fitted temperature
    is close to 4 and brings ECE back near the calibrated model's."""
    rng = np.random.default_rng(0)
    n, k = 20000, 4
    z = rng.normal(size=(n, k)) * 1.5
    y = np.array([rng.choice(k, p=p) for p in softmax(z)])  # labels from softmax(z) itself
    t = fit_temperature(4 * z, y)
    assert t == pytest.approx(4.0, rel=0.05)
    before = expected_calibration_error(softmax(4 * z), y)
    after = expected_calibration_error(softmax(4 * z / t), y)
    assert before > 0.15 and after < 0.02


def test_a_validation_split_without_errors_does_not_make_the_model_certain():
    z = np.eye(3)[np.arange(60) % 3] * 8.0  # every image right, margin 8
    y = np.arange(60) % 3
    t = fit_temperature(z, y)
    top = softmax(z / t).max(1)
    # 60 images justify at most about 1 - 1/62 confidence, not 1 - 1e-9
    assert top.mean() == pytest.approx(1 - 1 / 62, abs=0.01)


# ---------------------------------------------------------------- the graph's OOD tail
def test_model_outputs_in_torch_match_the_numpy_reference():
    rng = np.random.default_rng(1)
    ref, held, new = rng.normal(size=(50, 8)), rng.normal(size=(30, 8)), rng.normal(size=(7, 8))
    held_scores = knn_similarity(held, ref, 5)
    out = ModelOutputs(2.0, ref, held_scores, k=5)
    logits = torch.from_numpy(rng.normal(size=(7, 3)).astype(np.float32))
    z, p, s, pv = out(logits, torch.from_numpy(new.astype(np.float32)))
    np.testing.assert_allclose(z.numpy(), logits.numpy() / 2, rtol=1e-6)
    np.testing.assert_allclose(p.numpy().sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s.numpy(), knn_similarity(new, ref, 5), atol=1e-6)
    np.testing.assert_allclose(pv.numpy(), conformal_pvalue(s.numpy(), held_scores), atol=1e-7)


def test_conformal_pvalues_flag_about_alpha_of_exchangeable_images():
    """Held-out and new scores from one distribution: at most alpha flagged (plus noise)."""
    rng = np.random.default_rng(2)
    shares = []
    for _ in range(200):
        held, new = rng.normal(size=200), rng.normal(size=1000)
        shares.append(float((conformal_pvalue(new, held) <= ALPHA).mean()))
    assert np.mean(shares) == pytest.approx(ALPHA, abs=0.005)
    # the smallest p-value a held-out set of n can give is 1/(n+1)
    assert conformal_pvalue(np.array([-1e9]), rng.normal(size=99))[0] == pytest.approx(0.01)


def test_shift_lines_name_the_numbers():
    ood = {"ood": {"test_images": 600, "test_mean_pvalue": 0.2, "test_median_pvalue": 0.1,
                   "test_flagged": 0.3}}  # fmt: skip
    lines = _shift_lines(ood, 0.9855, 1043, 0.8447, 624)
    assert lines[0] == (
        "test accuracy 0.8447 is below the validation accuracy 0.9855 by more than both "
        f"splits' noise ({1.96 * math.hypot(math.sqrt(0.9855 * 0.0145 / 1043), math.sqrt(0.8447 * 0.1553 / 624)):.4f}, 95%): "  # noqa: E501
        "the test images differ from the training and validation images"
    )
    assert lines[1] == (
        "test images sit further from the training data than validation images: median OOD "
        "p-value 0.10 (0.5 expected), 30.0% flagged (about 5% expected)"
    )
    calm = {"ood": {"test_images": 600, "test_mean_pvalue": 0.49, "test_median_pvalue": 0.5,
                    "test_flagged": 0.05}}  # fmt: skip
    assert _shift_lines(calm, 0.95, 300, 0.94, 600) == []


# ---------------------------------------------------------------- the fitted model
def test_the_run_records_calibration_and_ood(fitted):
    m = fitted.metrics_
    cal, ood = m["calibration"], m["ood"]
    assert cal["method"] == "temperature scaling" and cal["temperature"] > 0
    assert cal["validation"]["n"] == m["validation"]["n"]
    assert set(cal["validation"]["before"]) == {"ece", "nll"}
    # held out: the validation images and, leave-one-out, the reference training images
    assert ood["threshold"] == ALPHA
    assert ood["held_out_images"] == m["validation"]["n"] + ood["reference_images"]
    assert m["shift"] == []  # no test split
    report = (fitted.run_dir_ / "report.html").read_text()
    assert 'aria-label="reliability diagram"' in report and "Out-of-distribution flag" in report


def test_predictor_takes_a_run_folder_and_a_single_path(fitted, digits_dir):
    one = sorted(digits_dir.rglob("*.png"))[0]
    by_folder = Predictor(fitted.run_dir_).predict(str(one), top_k=2)
    by_file = Predictor(fitted.onnx_path_).predict([one], top_k=2)
    assert by_folder == by_file and len(by_folder) == 1
    (r,) = by_folder
    assert r["path"] == str(one) and isinstance(r["top"][0], list)
    assert isinstance(r["ood"], bool) and 0 < r["ood_pvalue"] <= 1


def test_predict_cli_takes_a_run_folder_and_prints_ood(fitted, digits_dir):
    out = run("predict", str(fitted.run_dir_), str(digits_dir), "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(expand_paths([digits_dir]))
    assert all(set(r) == {"path", "top", "ood", "ood_pvalue"} for r in rows)
    empty = fitted.run_dir_.parent / "empty-run"
    empty.mkdir(exist_ok=True)
    bad = run("predict", str(empty), str(digits_dir))
    assert_one_line_error(bad, f"'{empty}' is a folder without model.onnx")


def test_estimator_predicts_through_the_exported_model(fitted, digits_dir):
    files = expand_paths([digits_dir])
    probs = fitted.predict_proba(digits_dir)
    onnx = Predictor(fitted.onnx_path_).predict_proba(files)
    np.testing.assert_allclose(probs, onnx, atol=1e-6)
    assert fitted.predict(str(files[0])) == [fitted.classes_[int(onnx[0].argmax())]]
    assert fitted.score(digits_dir) == float(np.mean(
        [fitted.classes_[i] == f.parent.name for i, f in zip(onnx.argmax(1), files, strict=True)]
    ))  # fmt: skip


def test_a_client_written_from_the_metadata_alone_reproduces_the_predictor(fitted, digits_dir):
    """onnxruntime, numpy and Pillow, and what the model's metadata says: nothing else."""
    files = [str(f) for f in sorted(digits_dir.rglob("*.png"))[:6]]
    code = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np, onnxruntime as ort
        from PIL import Image, ImageOps
        s = ort.InferenceSession({str(fitted.onnx_path_)!r}, providers=["CPUExecutionProvider"])
        meta = {{k.split(".", 1)[1]: json.loads(v)
                 for k, v in s.get_modelmeta().custom_metadata_map.items()}}
        prep, inp = meta["preprocessing"], meta["input"]
        assert inp["dtype"] == "float32" and inp["layout"] == "NCHW" and inp["range"] == [0, 1]
        rs = {{"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}}[prep["interpolation"]]
        batch = []
        for path in {files!r}:
            img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
            w, h = img.size
            scale = prep["resize_size"] / min(w, h)
            c = prep["crop_size"]
            nw, nh = max(c, round(w * scale)), max(c, round(h * scale))
            img = img.resize((nw, nh), rs)
            left, top = (nw - c) // 2, (nh - c) // 2
            img = img.crop((left, top, left + c, top + c))
            batch.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        names = [o.name for o in s.get_outputs()]
        out = dict(zip(names, s.run(None, {{inp["name"]: np.stack(batch)}})))
        assert set(meta["outputs"]) == set(names), (meta["outputs"], names)
        rows = []
        for probs, pv in zip(out["probabilities"], out["ood_pvalue"]):
            j = int(np.argmax(probs))
            rows.append([meta["classes"][j], float(probs[j]), bool(pv <= meta["ood"]["threshold"]),
                         float(pv)])
        print(json.dumps(rows))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    client = json.loads(out.stdout)
    ours = Predictor(fitted.onnx_path_).predict(files)
    assert [c[0] for c in client] == [r["top"][0][0] for r in ours]
    np.testing.assert_allclose([c[1] for c in client], [r["top"][0][1] for r in ours], atol=1e-6)
    assert [c[2] for c in client] == [r["ood"] for r in ours]
    np.testing.assert_allclose([c[3] for c in client], [r["ood_pvalue"] for r in ours], atol=1e-7)


def test_images_from_another_dataset_are_flagged(fitted):
    """Photos of ants and bees sent to a model of three digit classes: flagged, while its
    own validation images are flagged at about the threshold's rate (in-sample: <= alpha)."""
    photos = shared_dataset("hymenoptera_data") / "val"
    files = sorted(photos.rglob("*.jpg"))[::4][:30]
    results = Predictor(fitted.onnx_path_).predict(files)
    assert sum(r["ood"] for r in results) == len(files)


def test_the_readme_python_example_runs_as_written(tmp_path, digits_dir):
    """The README's Python blocks, verbatim, in a folder holding the paths they name."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Python", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, blocks
    (tmp_path / "path" / "to").mkdir(parents=True)
    (tmp_path / "path" / "to" / "images").symlink_to(digits_dir)
    (tmp_path / "path" / "to" / "labelled_test_folder").symlink_to(digits_dir)
    pngs = sorted(digits_dir.rglob("*.png"))
    for name, src in (("a.jpg", pngs[0]), ("b.jpg", pngs[20])):
        (tmp_path / name).write_bytes(src.read_bytes())  # a PNG named .jpg: decoded by content
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "c.png").write_bytes(pngs[40].read_bytes())
    script = "\n".join(blocks) + "\nprint(repr(_))\n"
    # each block's last expression is what its comment shows: keep it as `_`
    script = script.replace("\npredictor.predict(", "\n_ = predictor.predict(")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    shown = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own repr of plain data
    assert [r["path"] for r in shown] == ["a.jpg", str(Path("folder") / "c.png")]
    assert all(set(r) == {"path", "top", "ood", "ood_pvalue"} and len(r["top"]) == 3 for r in shown)


def test_the_metadata_names_every_output_of_the_graph(fitted):
    s = ort.InferenceSession(str(fitted.onnx_path_), providers=["CPUExecutionProvider"])
    meta = s.get_modelmeta().custom_metadata_map
    assert list(json.loads(meta["automl_tl.outputs"])) == [o.name for o in s.get_outputs()]
    assert [o.name for o in s.get_outputs()] == [
        "logits",
        "probabilities",
        "ood_score",
        "ood_pvalue",
    ]
    does = json.loads(meta["automl_tl.graph_does"])
    assert does["calibration"]["temperature"] == fitted.metrics_["calibration"]["temperature"]


def test_an_int8_model_counts_its_ood_pvalues_against_its_own_scores(fitted, digits_dir, tmp_path):
    """int8 features score a little differently from fp32 ones: the int8 copy's held-out
    scores are its own scores of the validation images, so its p-values on those images are
    exactly (1 + rank) / (n + 1) and it flags at most alpha of them."""
    from automl_tl.data.preprocess import batch_to_float, load_for_model
    from automl_tl.export.quantize import int8_variant

    files = sorted(digits_dir.rglob("*.png"))
    prep = fitted.spec_.preprocessing
    images = batch_to_float([load_for_model(f, prep) for f in files])
    labels = np.array([fitted.classes_.index(f.parent.name) for f in files])
    out = tmp_path / "model.int8.onnx"
    record = int8_variant(fitted.onnx_path_, images[:8], images, labels, out,
                          min_speedup=0.0, max_drop=1.0, ood_threshold=ALPHA)  # fmt: skip
    assert record["kept"] is True and record["ood_held_out"] == (
        f"{len(files)} validation images scored by the int8 model"
    )
    got = Predictor(out).run(images)
    order = np.argsort(np.argsort(got["ood_score"], kind="stable"), kind="stable")
    np.testing.assert_allclose(got["ood_pvalue"], (order + 2) / (len(files) + 1), atol=1e-6)
    assert record["int8_ood_flagged"] <= ALPHA

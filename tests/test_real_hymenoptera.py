"""Real data: the classic ants/bees transfer-learning set, end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import shared_dataset

CLI = str(Path(sys.executable).parent / "automl-tl")


@pytest.fixture(scope="module")
def hymenoptera_run(tmp_path_factory):
    data = shared_dataset("hymenoptera_data")
    out = tmp_path_factory.mktemp("hymenoptera") / "run"
    res = subprocess.run(
        [CLI, "fit", str(data), "--out", str(out), "--json"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return data, out, json.loads(res.stdout)


def test_fit_reaches_tutorial_accuracy(hymenoptera_run):
    _, out, summary = hymenoptera_run
    # The PyTorch tutorial's fixed-feature ResNet-18 reports 0.948 on this val split.
    assert summary["val_accuracy"] >= 0.93
    assert summary["images_used"] == 398
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["n"] == 153


def test_export_reproduces_torch(hymenoptera_run):
    _, _, summary = hymenoptera_run
    check = summary["export_check"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0
    assert check["n_images"] >= 16


def test_predict_labels_val_images_with_the_same_accuracy(hymenoptera_run):
    data, out, summary = hymenoptera_run
    res = subprocess.run(
        [CLI, "predict", str(out / "model.onnx"), str(data / "val"), "--json"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 153
    correct = sum(Path(r["path"]).parent.name == r["top"][0][0] for r in rows)
    assert correct / len(rows) == pytest.approx(summary["val_accuracy"], abs=1e-9)

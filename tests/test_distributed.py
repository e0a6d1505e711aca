"""Under torchrun: the sharded embedding equals one process's, and every kind of fit (the
default frozen choice with the view search, the composed export and the memo; cases 3 and 4
with fine-tuning) runs on a fresh and on a warm cache with two processes and gives the model
one process gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from automl_tl.data.demo import write_digits
from automl_tl.data.files import expand_paths
from automl_tl.export.predictor import Predictor
from automl_tl.features.embed import embed
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.plugins import get_plugins
from tests.helpers import CLI, LITE0

SCRIPT = Path(__file__).with_name("ddp_embed_script.py")
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def test_two_process_embedding_matches_one_process(tmp_path):
    data = write_digits(tmp_path / "d", per_class=5, digits=(2, 3))  # 10 images: uneven shards
    (data / "3" / "0004.png").unlink()  # 9 images: ranks get 5 and 4
    out = tmp_path / "feats.npy"
    res = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(data), str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "world 2 rows 9" in res.stdout
    spec = get_plugins().backbone("efficientnet_lite0")
    fx = FeatureExtractor(spec.build(), spec.preprocessing, len(spec.stages) - 1)
    with torch.inference_mode():
        single = np.concatenate(embed(fx, expand_paths([data]), spec.preprocessing, 4), axis=1)
    np.testing.assert_allclose(np.load(out), single, atol=1e-4)


def _fit(data: Path, out: Path, cache: Path, extra: list[str], processes: int) -> dict:
    args = ["fit", str(data), "--out", str(out), "--cache-dir", str(cache), "--json", "-q", *extra]
    if processes == 1:
        cmd = [CLI, *args]
    else:
        cmd = [TORCHRUN, "--standalone", "--nproc_per_node", str(processes), "-m", "automl_tl"]
        cmd += args
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)  # rank 0 alone prints
    assert summary["export_check"]["passed"] is True
    plan = json.loads((out / "plan.json").read_text())
    return {**summary, "view": plan["view"], "outcome": plan["outcome"]}


def _probabilities(model: str, images: list[Path]) -> np.ndarray:
    rows = Predictor(model).predict(images, top_k=10)
    return np.array([[p for _, p in sorted(r["top"])] for r in rows])


@pytest.mark.parametrize(
    "extra",
    [[], ["--case", "4", "--finetune-epochs", "1", *LITE0]],  # the search: default-frozen-choice
    ids=["default-frozen-choice", "case-4-fine-tuning"],
)
def test_fit_under_torchrun_fresh_then_warm_gives_the_one_process_model(tmp_path, extra):
    data = write_digits(tmp_path / "d", per_class=8, digits=(0, 1, 7))
    one = _fit(data, tmp_path / "one", tmp_path / "cache-one", extra, 1)
    fresh = _fit(data, tmp_path / "fresh", tmp_path / "cache", extra, 2)  # memo.sqlite made
    warm = _fit(data, tmp_path / "warm", tmp_path / "cache", extra, 2)  # by two processes
    assert fresh["feature_cache"]["computed"] == 12  # rank 0's half of 24 images
    assert warm["feature_cache"]["computed"] == 0 and warm["feature_cache"]["hits"] == 24
    images = expand_paths([data])
    for two in (fresh, warm):
        for key in ("case", "strategy", "view", "outcome", "val_accuracy", "images_used"):
            assert two[key] == one[key], key
        diff = np.abs(_probabilities(two["model"], images) - _probabilities(one["model"], images))
        assert float(diff.max()) < 1e-3
    for out in ("fresh", "warm"):  # one run folder, written by rank 0
        kept = json.loads((tmp_path / out / "metrics.json").read_text())["int8"]["kept"]
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == sorted([
            "audit.json", "classes.json", "label_issues.csv", "metrics.json", "model.onnx",
            "plan.json", "report.html", *(["model.int8.onnx"] if kept else []),
        ])  # fmt: skip

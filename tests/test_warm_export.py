"""A warm re-fit publishes the remembered composed model: no onnx import, same bytes (issue #10).

Two `automl-tl fit` processes on the same images and the same feature cache, each into its
own --out folder. The first composes model.onnx from the cached embedding graph and remembers
it (models/composed-<key>.onnx + sha256 sidecar); the second must not import the onnx package
at all, must publish a file byte-identical to the freshly composed one (the metadata is the
same: it holds no timestamp) and must still pass the onnxruntime-vs-torch check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from automl_tl.data.demo import write_digits

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI in a fresh interpreter and prints, last, which of the modules a warm fit has no
# use for got imported: onnx (composing a model) and torchvision (its import loads the model
# zoo and torch._dynamo: about a second).
DRIVER = textwrap.dedent(
    """
    import json, sys
    from automl_tl.cli import main
    try:
        main.main(sys.argv[1:], standalone_mode=False)
    finally:
        loaded = sorted(
            m for m in sys.modules
            if m in ("onnx", "torchvision", "torch._dynamo") or m.startswith("onnx.")
        )
        print(json.dumps(loaded))
    """
)


def _fit(data: Path, cache: Path, out: Path) -> list[str]:
    """One CLI fit in a subprocess (the onnxruntime engine even for these few images, so
    model.onnx is composed from the embedding graph); the onnx modules it imported."""
    env = {**os.environ, "AUTOML_TL_CACHE_DIR": str(cache)}
    args = ["fit", str(data), "--case", "1", "--epochs", "5", "--engine", "onnxruntime"]
    args += ["--out", str(out), "-q"]
    res = subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _meta(path: Path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm-export")
    data = write_digits(tmp / "data", per_class=4, digits=(0, 1, 7))
    cache = tmp / "cache"
    cold_modules = _fit(data, cache, tmp / "cold")
    warm_modules = _fit(data, cache, tmp / "warm")
    return tmp / "cold", tmp / "warm", cache, cold_modules, warm_modules


def test_cold_fit_composes_and_remembers(two_fits):
    cold, _, cache, cold_modules, _ = two_fits
    assert "onnx" in cold_modules  # composing needs it: the test would notice if it did not
    check = json.loads((cold / "metrics.json").read_text())["export_check"]
    assert check["passed"] is True and check["reused_composition"] is False
    (memo,) = (cache / "models").glob("composed-*.onnx")
    sidecar = json.loads(memo.with_suffix(".json").read_text())
    assert memo.read_bytes() == (cold / "model.onnx").read_bytes()
    assert sidecar["key"] == memo.stem.removeprefix("composed-") and len(sidecar["sha256"]) == 64


def test_warm_fit_does_not_import_onnx_and_reuses_the_same_bytes(two_fits):
    cold, warm, _, _, warm_modules = two_fits
    assert warm_modules == []
    check = json.loads((warm / "metrics.json").read_text())["export_check"]
    assert check["passed"] is True and check["reused_composition"] is True
    assert check["n_images"] > 0 and check["top1_agreement"] == 1.0
    assert _meta(warm / "model.onnx") == _meta(cold / "model.onnx")
    assert (warm / "model.onnx").read_bytes() == (cold / "model.onnx").read_bytes()


def test_the_time_is_in_metrics_not_in_the_model(two_fits):
    cold, warm, *_ = two_fits
    for run in (cold, warm):
        provenance = json.loads(_meta(run / "model.onnx")["automl_tl.provenance"])
        assert "created" not in provenance and provenance["backbone"] == "efficientnet_lite0"
        created = json.loads((run / "metrics.json").read_text())["created"]
        assert len(created) == 20 and created.endswith("Z"), created


def test_warm_analysis_is_remembered_and_plans_the_same(tmp_path):
    """The analysis's measured numbers come back from the memo on a re-run with the same
    content (no rows read), equal to the cold run's in value and order; another seed (another
    BN-drift subset) is measured again."""
    import dataclasses

    from automl_tl.data.audit import audit
    from automl_tl.data.scan import scan
    from automl_tl.data.split import split
    from automl_tl.decide.analysis import analyse
    from automl_tl.features.cache import FeatureCache
    from automl_tl.plugins.manager import get_plugins

    data = write_digits(tmp_path / "data", per_class=6, digits=(0, 1, 7))
    report = audit(scan(data))
    train, val, test = split(report.samples, 0.25, 0)
    spec = get_plugins().backbone("efficientnet_lite0")
    net = spec.build()
    feats = FeatureCache(spec, net, tmp_path / "cache", engine="torch")
    try:
        runs = [analyse(spec, net, train, val, test, report.classes, features=feats) for _ in "ab"]
        reseeded = analyse(spec, net, train, val, test, report.classes, seed=1, features=feats)
    finally:
        feats.close()
    cold, warm = runs
    assert cold.stage_rows is not None and warm.stage_rows is None
    assert reseeded.stage_rows is not None
    as_json = [json.dumps(dataclasses.asdict(r.profile)) for r in runs]
    assert as_json[0] == as_json[1]
    assert warm.profile.probes and list(warm.profile.probes) == list(cold.profile.probes)
    assert warm.images_per_second == cold.images_per_second > 0


def test_the_int8_verdict_is_measured_once_and_remembered(two_fits):
    """The cold fit quantises and times int8 against fp32; the warm fit, ending with the same
    model.onnx, publishes the remembered verdict (and int8 file) and measures nothing."""
    cold, warm, cache, *_ = two_fits
    first = json.loads((cold / "metrics.json").read_text())["int8"]
    again = json.loads((warm / "metrics.json").read_text())["int8"]
    assert "reused" not in first and again["reused"] is True
    assert {k: v for k, v in again.items() if k not in ("reused", "path", "int8_sha256")} == {
        k: v for k, v in first.items() if k != "path"
    }
    assert first["reason"].startswith("int8 kept" if first["kept"] else "int8 not kept")
    assert (cold / "model.int8.onnx").exists() == first["kept"]
    assert (warm / "model.int8.onnx").exists() == first["kept"]
    if first["kept"]:
        assert (warm / "model.int8.onnx").read_bytes() == (cold / "model.int8.onnx").read_bytes()
    assert len(list((cache / "models").glob("int8-*.json"))) == 1

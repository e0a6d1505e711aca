"""The feature cache end to end: real backbone, real images, onnxruntime engine, SQLite +
shards store. Warm runs compute nothing; a killed run resumes; two processes share a cache;
the pure-torch fallback of the compiled ops gives the same fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from automl_tl import AutoTransfer
from automl_tl.data.audit import audit
from automl_tl.data.scan import scan
from automl_tl.features.cache import FeatureCache
from automl_tl.features.embed import embed
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.features.store import FeatureStore
from automl_tl.features.views import frozen_views
from automl_tl.plugins.manager import get_plugins

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lite0():
    spec = get_plugins().backbone("efficientnet_lite0")
    return spec, spec.build(None)


def _samples(folder):
    return audit(scan(folder)).samples


def test_cached_rows_equal_the_backbone_and_a_warm_cache_computes_nothing(
    digits_dir, lite0, tmp_path
):
    spec, net = lite0
    samples = _samples(digits_dir)[:12]
    cold = FeatureCache(spec, net, tmp_path, batch_size=4)
    rows = cold.stage_rows(samples)
    assert (cold.stats.hits, cold.stats.computed) == (0, 12)
    direct = embed(
        FeatureExtractor(net, spec.preprocessing, len(spec.stages) - 1),
        [s.path for s in samples],
        spec.preprocessing,
        4,
        engine="torch",
    )
    for stored, exact in zip(rows, direct, strict=True):
        got = stored.dequantize().numpy()
        scale = np.abs(exact).max()
        assert stored.values.dtype == torch.float16
        # fp16 storage (2^-11 relative) + onnxruntime vs torch + decoder differences
        assert np.abs(got - exact).max() <= 2e-2 * scale
    warm = FeatureCache(spec, net, tmp_path, batch_size=4)
    again = warm.stage_rows(samples)
    assert (warm.stats.hits, warm.stats.computed) == (12, 0)
    assert all(torch.equal(a.values, b.values) for a, b in zip(rows, again, strict=True))


def test_int8_storage_is_smaller_and_close(digits_dir, lite0, tmp_path):
    spec, net = lite0
    samples = _samples(digits_dir)[:8]
    half = FeatureCache(spec, net, tmp_path, batch_size=4).rows(samples, "head")
    quarter = FeatureCache(spec, net, tmp_path, "int8", batch_size=4).rows(samples, "head")
    assert quarter.values.dtype == torch.int8 and quarter.scales is not None
    a, b = half.dequantize(), quarter.dequantize()
    step = quarter.scales[:, None]  # one quantisation step per row
    assert bool(((a - b).abs() <= step + 1e-3 * a.abs()).all())
    per_value = {}
    for space in FeatureStore(tmp_path).info()["spaces"]:
        head = space["stages"]["head"]
        per_value[space["dtype"]] = head["bytes"] / (head["rows"] * head["width"])
    assert 2.0 <= per_value["fp16"] < 2.1 and 1.0 <= per_value["int8"] < 1.1


def _stored(cache_dir: Path) -> int:
    try:
        info = FeatureStore(cache_dir).info()
    except Exception:  # the index may not exist yet
        return 0
    return int(info.get("entries", 0))


def test_killed_while_embedding_leaves_a_clean_cache_and_the_rerun_resumes(digits_dir, tmp_path):
    """SIGKILL after the first committed chunks; verify is clean; the re-run computes only
    what the killed run had not committed."""
    cmd = [sys.executable, "-m", "tests.features_script", str(digits_dir), str(tmp_path)]
    proc = subprocess.Popen(cmd + ["--chunk", "8"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _stored(tmp_path) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored_rows = _stored(tmp_path)
    assert stored_rows > 0, "the run was killed before it committed anything"
    report = FeatureStore(tmp_path).verify(repair=True)
    assert report["bad_entries"] == 0, report
    assert FeatureStore(tmp_path).verify()["problems"] == []
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    n = len(_samples(digits_dir))
    views = len(frozen_views(get_plugins().backbone("efficientnet_lite0")))  # rows per image
    assert stats["hits"] == stored_rows // views and stats["computed"] == n - stats["hits"]
    assert stats["computed"] < n
    assert FeatureStore(tmp_path).verify()["problems"] == []


def test_two_processes_fill_one_cache(digits_dir, tmp_path):
    cmd = [sys.executable, "-m", "tests.features_script", str(digits_dir), str(tmp_path)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    n = len(_samples(digits_dir))
    for out in outs:
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["hits"] + stats["computed"] == n
    assert FeatureStore(tmp_path).verify()["problems"] == []
    spec = get_plugins().backbone("efficientnet_lite0")
    cache = FeatureCache(spec, spec.build(None), tmp_path)
    cache.stage_rows(_samples(digits_dir))
    assert cache.stats.computed == 0


def test_warm_refit_computes_nothing_and_gives_the_same_model(digits_dir, tmp_path):
    kw = dict(case=1, epochs=10, cache_dir=tmp_path / "cache")
    first = AutoTransfer(out=tmp_path / "a", **kw).fit(digits_dir)
    second = AutoTransfer(out=tmp_path / "b", **kw).fit(digits_dir)
    assert first.cache_stats_["computed"] == len(first.audit_.samples)
    assert second.cache_stats_["computed"] == 0
    assert second.cache_stats_["hits"] == len(second.audit_.samples)
    assert second.history_ == first.history_
    assert second.export_check_["passed"]
    assert (tmp_path / "b" / "report.html").stat().st_size > 0


def test_fallback_ops_give_the_same_fit(digits_dir, tmp_path):
    """The same fit with the compiled extension disabled: the torch reference is used,
    says so, and gives the same validation accuracy."""
    env = {**os.environ, "AUTOML_TL_DISABLE_EXT": "1"}
    args = ["--case", "1", "--epochs", "10", "--json", "--cache-dir", str(tmp_path / "c")]
    runs = {}
    for name, e in (("fallback", env), ("default", os.environ)):
        fit = [sys.executable, "-m", "automl_tl", "fit", str(digits_dir)]
        res = subprocess.run(
            [*fit, "--out", str(tmp_path / name), *args],
            cwd=ROOT,
            env=e,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        runs[name] = (json.loads(res.stdout), res.stderr)
    fallback, stderr = runs["fallback"]
    assert fallback["feature_cache"]["backend"] == "torch"
    assert "fallback" in stderr
    assert fallback["val_accuracy"] == runs["default"][0]["val_accuracy"]


def test_a_warm_cache_reports_the_embedding_rate_its_last_cold_run_measured(tmp_path):
    """Fine-tuning estimates need the frozen graph's speed; a warm run embeds nothing, so it
    reads the rate the run that filled this cache measured (torch eager's slower rate made
    a warm mnist run skip fine-tuning a cold one would try)."""
    from automl_tl.data.demo import write_digits
    from automl_tl.features.cache import RATE_MIN_IMAGES

    folder = write_digits(tmp_path / "digits", per_class=22, digits=(0, 1, 7))
    samples = audit(scan(folder)).samples
    assert len(samples) == 66 >= RATE_MIN_IMAGES
    spec = get_plugins().backbone("efficientnet_lite0")
    net = spec.build()
    cold = FeatureCache(spec, net, tmp_path / "cache")
    assert cold.embed_rate() is None
    cold.ensure(samples)
    rate = cold.embed_rate()
    assert cold.stats.computed == 66 and rate == cold.stats.computed / cold.stats.seconds
    warm = FeatureCache(spec, net, tmp_path / "cache")
    warm.ensure(samples)
    assert warm.stats.computed == 0 and warm.embed_rate() == rate
    assert FeatureCache(spec, net, tmp_path / "other").embed_rate() is None
    few = FeatureCache(spec, net, tmp_path / "few")
    few.ensure(samples[:10])  # too few images to time the graph rather than its start
    assert few.embed_rate() is None

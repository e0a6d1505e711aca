"""A full disk (issue #10): the feature cache, the run folder and fine-tuning checkpoints on a
filesystem that fills up.

Where the machine allows it (root, `mount -t tmpfs` permitted) the files really go to a small
tmpfs mounted by the `small_fs` fixture and unmounted after, filled up with a filler file: the
kernel answers ENOSPC, SQLite SQLITE_FULL. Where mounting is not permitted those tests skip and
say so; the tests marked "simulated" always run in-process and raise ENOSPC from a
monkeypatched write path instead (the same code paths, without a real filesystem).

Required behaviour: a full cache never stops a fit (one warning; rows kept in memory); a full
run folder or checkpoint folder gets ONE line naming the path and the space needed; nothing
half-written is left behind or read back as good.
"""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from automl_tl.core.errors import DiskFullError
from automl_tl.data.demo import write_digits
from automl_tl.estimator import AutoTransfer
from automl_tl.features import store_format as cache_format
from automl_tl.features.store import FeatureStore
from automl_tl.report.run_folder import RunFolder
from automl_tl.train.checkpoints import write_checkpoint

CLI = str(Path(sys.executable).parent / "automl-tl")
WARNING = "WARNING: feature cache full, this run goes on without caching"


class SmallFS:
    """A mounted tmpfs of `size` bytes; `fill()` leaves about `leave` bytes free."""

    def __init__(self, path: Path):
        self.path = path

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        with open(self.path / f"filler-{uuid.uuid4().hex[:6]}", "wb", buffering=0) as fh:
            chunk = b"\0" * 4096
            try:
                while self.free() > leave:
                    fh.write(chunk)
                    fh.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC

    def unfill(self) -> None:
        for f in self.path.glob("filler-*"):
            f.unlink()


@pytest.fixture
def small_fs(tmp_path):
    """Factory of small tmpfs mounts (unmounted at teardown); skips where mount is refused."""
    mounts: list[Path] = []

    def make(name: str, size: str) -> SmallFS:
        path = tmp_path / name
        path.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); "
                "the simulated-ENOSPC tests in this file cover the same paths"
            )
        mounts.append(path)
        return SmallFS(path)

    yield make
    for path in reversed(mounts):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits") / "d", per_class=6, digits=(0, 1))


def _half_written(*folders: Path) -> list[Path]:
    """Temporary files a writer left (shards being written, atomic-write temporaries)."""
    return [
        p
        for folder in folders
        for p in folder.rglob("*")
        if p.suffix in (".tmp", ".part") or p.name.startswith(".write-check-")
    ]


def _fit(data, cache, out, **kw):
    # one backbone: the small file systems are sized for one backbone's rows
    return AutoTransfer(
        backbone="efficientnet_lite0", cache_dir=cache, out=out, engine="torch", epochs=5,
        quiet=False, **kw,
    ).fit(data)  # fmt: skip


# ------------------------------------------------------------------ the feature cache
def test_fit_goes_on_with_a_full_cache_and_caches_again_once_freed(
    digits, small_fs, tmp_path, capfd
):
    fs = small_fs("cache", "512k")
    fs.fill()
    cache = fs.path / "automl-tl"
    full = _fit(digits, cache, tmp_path / "run1")
    err = capfd.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("WARNING: feature cache full")]
    assert len(warnings) == 1, err  # one warning for memo, index and shards together
    assert "no space left on device writing" in warnings[0] and str(cache) in warnings[0]
    assert "Traceback" not in err
    n = len(full.audit_.samples)
    stats = full.metrics_["feature_cache"]
    assert stats["not_stored"] == n and stats["computed"] == n and stats["hits"] == 0
    assert (tmp_path / "run1" / "model.onnx").is_file() and full.export_check_["passed"]
    assert _half_written(fs.path) == []

    fs.unfill()  # space freed: the next run stores its rows, and they verify
    again = _fit(digits, cache, tmp_path / "run2")
    assert WARNING not in capfd.readouterr().err
    stats = again.metrics_["feature_cache"]
    assert stats["not_stored"] == 0 and stats["computed"] == n
    # rows kept in memory were quantised like stored ones: the same training either way
    assert again.history_ == full.history_
    report = FeatureStore(cache).verify()
    assert report["ok"] is True and report["bad_shards"] == 0 and report["bad_entries"] == 0
    assert report["temp_files"] == 0 and report["orphan_files"] == 0 and report["entries"] > 0
    fs.fill()  # a warm cache on a full disk: everything is read, nothing needs writing
    third = _fit(digits, cache, tmp_path / "run3")
    assert WARNING not in capfd.readouterr().err
    assert third.metrics_["feature_cache"]["hits"] == n and third.history_ == full.history_


def test_existing_cache_reopened_on_a_full_disk(small_fs):
    """Reopening a cache on a full disk cannot map its WAL index (SQLITE_IOERR_SHMSIZE):
    that is a full disk too, reported with the index path, and a memo falls back to memory."""
    from automl_tl.core.console import Console
    from automl_tl.features.memo import Memo

    fs = small_fs("cache", "512k")
    store = FeatureStore(fs.path)
    space = store.space_id({"backbone": "x"})
    store.put(space, ["a", "b"], {"s": np.ones((2, 4), dtype=np.float32)})
    store.close()
    Memo(fs.path).close()
    fs.fill()
    with pytest.raises(DiskFullError, match=r"features/index\.sqlite' \(needs more space, 0 B"):
        FeatureStore(fs.path).space_id({"backbone": "x"})
    out = io.StringIO()
    memo = Memo(fs.path, Console(stream=out))
    memo.put("ns", "k", [1])
    assert memo.get("ns", "k") == [1]  # kept for this run, in memory
    warned = out.getvalue()
    assert warned.count("WARNING: feature cache full") == 1 and "memo.sqlite" in warned
    memo.close()
    fs.unfill()
    assert FeatureStore(fs.path).verify()["entries"] == 2


def test_cache_filling_up_mid_run_is_simulated(digits, tmp_path, monkeypatch, capfd):
    """Simulated: the second shard write raises ENOSPC (in-process monkeypatch), so rows of
    one fit come partly from the store and partly from memory."""
    from automl_tl.data.audit import audit
    from automl_tl.data.scan import scan
    from automl_tl.features.cache import FeatureCache
    from automl_tl.features.views import frozen_views
    from automl_tl.plugins.manager import get_plugins

    spec = get_plugins().backbone("efficientnet_lite0")
    views = len(frozen_views(spec))  # one put writes a shard per cached view
    real, calls = cache_format.write_shard, []

    def write_shard(path, *args):
        calls.append(path)
        if len(calls) > views:  # the second put fails
            with open(path, "xb") as fh:  # half a file, as a real full disk leaves it
                fh.write(b"ATLFEAT")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *args)

    monkeypatch.setattr("automl_tl.features.store.write_shard", write_shard)
    net = spec.build()
    samples = audit(scan(digits)).samples
    cache = tmp_path / "cache"
    feats = FeatureCache(spec, net, cache, engine="torch", chunk=4, batch_size=4)
    rows = [r.dequantize().numpy() for r in feats.stage_rows(samples)]
    err = capfd.readouterr().err
    assert err.count(WARNING) == 1 and "needs" in err
    assert feats.stats.not_stored == len(samples) - 4 and feats.stats.computed == len(samples)
    assert _half_written(cache) == []
    report = FeatureStore(cache).verify()
    assert report["ok"] is True and report["entries"] == 4 * views
    feats.close()
    monkeypatch.setattr("automl_tl.features.store.write_shard", real)
    fresh = FeatureCache(spec, net, cache, engine="torch")  # everything stored this time
    again = [r.dequantize().numpy() for r in fresh.stage_rows(samples)]
    assert fresh.stats.hits == 4 and fresh.stats.computed == len(samples) - 4
    for a, b in zip(rows, again, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-2)
    fresh.close()


# ------------------------------------------------------------------ run folder and checkpoints
def test_full_run_folder_and_checkpoint_through_the_cli(digits, small_fs, tmp_path):
    """A fine-tuning fit with the cache AND the run folder on full filesystems: the cache
    warns once and the fit goes on; the checkpoint cannot be written: one error line."""
    cache_fs, out_fs = small_fs("cache", "256k"), small_fs("out", "1m")
    cache_fs.fill()
    out = out_fs.path / "run"
    res = subprocess.run(
        [CLI, "fit", digits, "--out", out, "--cache-dir", cache_fs.path / "c", "--quiet"]
        + ["--case", "3", "--finetune-epochs", "1", "--engine", "torch"]
        + ["--backbone", "efficientnet_lite0"],
        capture_output=True,
        text=True,
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 2 and lines[0].startswith(WARNING), res.stderr
    expected = (  # checkpoints/<pretrained or scratch>/finetune.pt
        rf"error: no space left on device writing '{re.escape(str(out))}/checkpoints/\S*"
        r"finetune\.pt' \(needs \d+\.\d MB, 0 B free there\); free some space there or pass --out"
    )
    assert re.match(expected, lines[1]), lines[1]
    assert list(out.rglob("finetune.pt")) == [] and _half_written(out_fs.path, cache_fs.path) == []


def _tiny_onnx():
    from automl_tl.export.onnx import _trace

    return _trace(torch.nn.Linear(8, 3), torch.rand(2, 8), "features", ["logits"])


def test_full_run_folder_files(small_fs, monkeypatch):
    """model.onnx, the json files and report.html on a full filesystem: one-line
    DiskFullError naming file and size; an older file stays whole; no temporary is left."""
    from automl_tl.export.onnx import _save_with_metadata
    from automl_tl.report.html import write_report

    fs = small_fs("out", "256k")
    run = RunFolder(fs.path / "run")
    old = run.write_json("metrics.json", {"accuracy": 0.5})
    fs.fill()
    with pytest.raises(DiskFullError) as e:
        run.write_json("metrics.json", {"accuracy": 0.9, "pad": "x" * 10_000})
    assert str(e.value).startswith(f"no space left on device writing '{old}' (needs 10.")
    assert "\n" not in str(e.value) and old.read_text() == '{\n  "accuracy": 0.5\n}\n'
    proto = _tiny_onnx()
    with pytest.raises(DiskFullError, match=r"model\.onnx' \(needs \d+ B"):
        _save_with_metadata(proto, run.file("model.onnx"), {"classes": ["a", "b", "c"]})
    monkeypatch.setattr("automl_tl.report.html.render_report", lambda data: "x" * 20_000)
    with pytest.raises(DiskFullError, match=r"report\.html' \(needs 20\.0 kB"):
        write_report(run.path, {})
    assert not run.file("model.onnx").exists() and not run.file("report.html").exists()
    assert _half_written(fs.path) == []
    fs.unfill()
    _save_with_metadata(proto, run.file("model.onnx"), {})  # works again once freed
    assert run.file("model.onnx").stat().st_size == len(proto.SerializeToString())


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(small_fs):
    fs = small_fs("ck", "256k")
    path = fs.path / "finetune.pt"
    write_checkpoint(path, {"format": "x", "w": torch.zeros(10)})
    fs.fill()
    with pytest.raises(DiskFullError, match=r"finetune\.pt' \(needs 4\d\d\.\d kB"):
        write_checkpoint(path, {"format": "x", "w": torch.ones(100_000)})
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(10))
    assert _half_written(fs.path) == []


def test_atomic_writes_on_a_simulated_full_disk(tmp_path, monkeypatch):
    """Simulated: every write in core.files.write_atomic raises ENOSPC (in-process monkeypatch)."""

    class Full(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[:100])  # part of it lands, like on a real full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(
        "automl_tl.core.files.open", lambda path, mode: Full(path, "w"), raising=False
    )
    run = RunFolder(tmp_path / "run")
    with pytest.raises(DiskFullError, match=r"plan\.json' \(needs 1\d\.\d kB, [\d.]+ \w?B free"):
        run.write_json("plan.json", {"x": "y" * 12_000})
    path = tmp_path / "run" / "checkpoints" / "finetune.pt"
    path.parent.mkdir()
    with pytest.raises(DiskFullError, match="finetune.pt"):
        write_checkpoint(path, {"format": "x"})
    monkeypatch.undo()
    assert _half_written(tmp_path / "run") == []
    assert not path.exists() and not (tmp_path / "run" / "plan.json").exists()


def test_any_full_disk_error_is_one_cli_line(capsys):
    """A full disk some writer did not name itself still ends in one `error:` line."""
    from automl_tl.cli.common import clean_errors

    @clean_errors
    def command(verbose=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/nowhere/file.bin")

    with pytest.raises(SystemExit) as e:
        command()
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"error: no space left on device writing '/nowhere/file\.bin' \(needs more space, "
        r"[\d.]+ \w?B free there\); free some space on that filesystem or write to another "
        r"folder\n",
        err,
    ), err


def test_onnx_export_into_a_full_cache_falls_back_to_torch(small_fs, capfd):
    """The backbone's onnxruntime export (about 14 MB) does not fit in the cache: the run
    embeds with torch after the one warning, and no refusal is recorded, so a later run with
    space exports as usual; no partial export is left."""
    from automl_tl.features.cache import FeatureCache
    from automl_tl.plugins.manager import get_plugins

    fs = small_fs("cache", "2m")
    spec = get_plugins().backbone("efficientnet_lite0")
    feats = FeatureCache(spec, spec.build(), fs.path, engine="onnxruntime")
    assert feats.runner(1000).engine == "torch"
    err = capfd.readouterr().err
    assert err.count(WARNING) == 1 and f"{fs.path}/models/" in err and ".onnx'" in err
    assert sorted(p.name for p in (fs.path / "models").iterdir()) == []  # no sidecar, no part
    feats.close()

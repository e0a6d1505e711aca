"""The feature cache: round trips, space ids, verify/repair, crashes, concurrency, CLI."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from automl_tl.cli import main
from automl_tl.core.console import Console
from automl_tl.core.errors import AutoTLError
from automl_tl.core.files import default_cache_dir
from automl_tl.features import ops
from automl_tl.features.store import CacheError, CacheMissError, FeatureStore

DESC = {
    "backbone": "efficientnet_lite0",
    "weights_sha256": "0" * 64,
    "preprocessing": {"resize": 256, "crop": 224, "mean": [0.5, 0.5, 0.5]},
    "decoder": "pillow",
    "format": 1,
}
WIDTHS = {"block3": 24, "head": 72}
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


def digests(lo: int, hi: int) -> list[str]:
    return [f"{i:032x}" for i in range(lo, hi)]


def feats(lo: int, hi: int, width: int, salt: float = 0.0) -> np.ndarray:
    """Deterministic float32 features of images lo..hi-1: a function of the image index only."""
    i = np.arange(lo, hi, dtype=np.float64)[:, None]
    x = np.sin(i * 0.37 + np.arange(width)[None, :] * 0.11 + salt) * (1 + i % 7)
    return x.astype(np.float32)


def stage_feats(lo: int, hi: int) -> dict[str, np.ndarray]:
    return {s: feats(lo, hi, w, k) for k, (s, w) in enumerate(WIDTHS.items())}


def open_store(root: Path, log: io.StringIO | None = None) -> FeatureStore:
    return FeatureStore(root, console=Console(stream=log if log is not None else io.StringIO()))


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path)
    yield s
    s.close()


def shard_files(root: Path) -> list[Path]:
    return sorted((root / "features" / "shards").glob("*.shard"))


# ------------------------------------------------------------------ round trips
def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOML_TL_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AUTOML_TL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "automl-tl"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_cache_dir() == tmp_path / "h" / ".cache" / "automl-tl"
    assert FeatureStore().dir == tmp_path / "h" / ".cache" / "automl-tl" / "features"


def test_fp16_round_trip_is_exact(store):
    sid = store.space_id(DESC, "fp16")
    x = feats(0, 300, 40)
    assert store.put(sid, digests(0, 300), {"head": x}) == {"head": 300}
    got = store.get(sid, "head", digests(0, 300))
    assert got.values.dtype == torch.float16 and got.scales is None
    assert torch.equal(got.values, ops.ref_quantize_fp16(torch.from_numpy(x)))
    assert torch.equal(got.dequantize(), got.values.float())


def test_int8_round_trip_within_one_step(store):
    sid = store.space_id(DESC, "int8")
    x = feats(0, 300, 40)
    x[5] = 0.0  # a zero row has scale 0
    store.put(sid, digests(0, 300), {"head": x})
    got = store.get(sid, "head", digests(0, 300))
    assert got.values.dtype == torch.int8 and got.scales.dtype == torch.float32
    q, scale = ops.ref_quantize_int8(torch.from_numpy(x))
    assert torch.equal(got.values, q) and torch.equal(got.scales, scale)
    err = (got.dequantize() - torch.from_numpy(x)).abs()
    assert (err <= got.scales[:, None] * 0.5 + 1e-6).all()
    assert got.dequantize()[5].abs().max() == 0
    assert torch.equal(got.dequantize([3, 1]), got.dequantize()[[3, 1]])


def test_rows_follow_the_requested_order(store):
    sid = store.space_id(DESC)
    store.put(sid, digests(0, 50), {"head": feats(0, 50, 8)})  # two shards
    store.put(sid, digests(50, 100), {"head": feats(50, 100, 8)})
    order = [97, 3, 50, 3, 0, 49, 51]  # across shards, with a repeat
    got = store.get(sid, "head", [f"{i:032x}" for i in order])
    assert torch.equal(got.values, ops.ref_quantize_fp16(torch.from_numpy(feats(0, 100, 8)[order])))
    assert len(store.get(sid, "head", [])) == 0
    empty = store.get(store.space_id(DESC, "int8"), "head", [])
    assert empty.values.dtype == torch.int8 and empty.scales.shape == (0,)


def test_several_stages_and_skipping_stored_rows(store):
    sid = store.space_id(DESC, "int8")
    assert store.put(sid, digests(0, 40), {"block3": feats(0, 40, 24)}) == {"block3": 40}
    written = store.put(sid, digests(0, 80), stage_feats(0, 80))
    assert written == {"block3": 40, "head": 80}  # stored rows are not written again
    assert store.put(sid, digests(0, 80), stage_feats(0, 80)) == {"block3": 0, "head": 0}
    dup = digests(80, 83) + digests(80, 81)  # a digest twice in one put: stored once
    assert store.put(sid, dup, {"head": feats(0, 4, 72)}) == {"head": 3}
    for k, (stage, width) in enumerate(WIDTHS.items()):
        got = store.get(sid, stage, digests(0, 80))
        assert got.values.shape == (80, width)
        q, _ = ops.quantize_int8(torch.from_numpy(feats(0, 80, width, k)))
        assert torch.equal(got.values, q)


def test_persists_across_instances_and_missing(tmp_path):
    first = open_store(tmp_path)
    sid = first.space_id(DESC)
    first.put(sid, digests(0, 10), stage_feats(0, 10))
    first.close()
    again = open_store(tmp_path)
    assert again.missing(sid, "head", digests(5, 15)) == [5, 6, 7, 8, 9]
    assert again.missing(sid, "nope", digests(0, 3)) == [0, 1, 2]
    assert again.missing("unknown-space", "head", digests(0, 2)) == [0, 1]
    got = again.get(sid, "block3", digests(0, 10))
    assert torch.equal(got.values, ops.ref_quantize_fp16(torch.from_numpy(feats(0, 10, 24, 0))))
    with pytest.raises(CacheMissError, match="5 of 15 requested rows") as e:
        again.get(sid, "head", digests(0, 15))
    assert isinstance(e.value, KeyError) and isinstance(e.value, AutoTLError)


def test_space_ids(store):
    base = store.space_id(DESC)
    assert base == store.space_id(dict(reversed(list(DESC.items()))))  # key order is irrelevant
    assert base == open_store(store.root).space_id(DESC)
    assert base == "4e73adfee9ba0039d3f8"  # stable across versions: a change orphans every cache
    variants = [store.space_id(DESC, "int8")]
    for key, value in [
        ("backbone", "resnet18"),
        ("weights_sha256", "1" * 64),
        ("preprocessing", {**DESC["preprocessing"], "crop": 240}),
        ("decoder", "torchvision"),
        ("format", 2),
    ]:
        variants.append(store.space_id({**DESC, key: value}))
    assert len(set(variants + [base])) == len(variants) + 1


def test_bad_input_is_a_clear_error(store):
    sid = store.space_id(DESC)
    cases = [
        (lambda: store.space_id(DESC, "bf16"), "bf16"),
        (lambda: store.space_id({"x": object()}), "not plain JSON"),
        (lambda: store.put("nope", digests(0, 1), {"a": feats(0, 1, 4)}), "unknown feature space"),
        (lambda: store.put(sid, digests(0, 2), {"a": feats(0, 3, 4)}), "(2, D)"),
        (lambda: store.put(sid, [b"x"], {"a": feats(0, 1, 4)}), "digests must be"),
        (lambda: store.put(sid, digests(0, 2), {"a": np.full((2, 4), 1e6, np.float32)}), "2 rows"),
    ]
    nan = feats(0, 3, 4)
    nan[1, 2] = np.nan
    cases.append((lambda: store.put(sid, digests(0, 3), {"a": nan}), "1 rows hold NaN"))
    for call, needle in cases:
        with pytest.raises(CacheError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            call()
    store.put(sid, digests(0, 2), {"a": feats(0, 2, 4)})
    with pytest.raises(CacheError, match="width 4, got 5"):
        store.put(sid, digests(2, 4), {"a": feats(0, 2, 5)})
    assert store.missing(sid, "a", digests(0, 4)) == [2, 3]  # nothing half-stored


# ------------------------------------------------------------------ info / verify / clear
def test_info_verify_clear(store):
    a = store.space_id(DESC, "fp16")
    b = store.space_id({**DESC, "backbone": "resnet18"}, "int8")
    store.put(a, digests(0, 100), stage_feats(0, 100))
    store.put(b, digests(0, 30), {"head": feats(0, 30, 72)})
    info = store.info()
    assert info["location"] == str(store.dir) and info["entries"] == 230 and info["shards"] == 3
    spaces = {s["id"]: s for s in info["spaces"]}
    assert spaces[a]["description"] == DESC and spaces[b]["dtype"] == "int8"
    assert spaces[a]["stages"]["head"]["entries"] == 100
    assert spaces[a]["stages"]["head"]["width"] == 72
    assert 1.0 < info["bytes_per_value"] < 2.1 and info["bytes_on_disk"] > 0
    assert store.verify() | {"location": None} == {
        "location": None,
        "shards": 3,
        "entries": 230,
        "bad_shards": 0,
        "bad_entries": 0,
        "orphan_files": 0,
        "temp_files": 0,
        "problems": [],
        "repaired": False,
        "ok": True,
    }
    with pytest.raises(CacheError, match="no single feature space"):
        store.clear("zzzz")
    assert store.clear(b[:6])["entries"] == 30  # a unique prefix is enough
    assert [s["id"] for s in store.info()["spaces"]] == [a]
    assert store.get(a, "head", digests(0, 100)).values.shape == (100, 72)
    assert store.clear()["entries"] == 200
    assert store.info()["entries"] == 0 and shard_files(store.root) == []


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 10)


def _flip(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "orphan shard", "temp file"])
def test_verify_detects_and_repairs(tmp_path, damage):
    store = open_store(tmp_path)
    sid = store.space_id(DESC, "int8")
    store.put(sid, digests(0, 50), {"head": feats(0, 50, 72)})
    store.put(sid, digests(50, 80), {"head": feats(50, 80, 72)})
    victim = shard_files(tmp_path)[0]
    n_victim = 50 if victim.stat().st_size > 50 * 72 else 30
    if damage == "truncated":
        _truncate(victim)
    elif damage == "flipped byte":
        _flip(victim)
    elif damage == "orphan shard":
        (victim.parent / ("f" * 32 + ".shard")).write_bytes(victim.read_bytes())
    else:
        (victim.parent / ("e" * 32 + ".tmp")).write_bytes(b"half a shard")
    report = store.verify()
    assert not report["ok"] and len(report["problems"]) == 1, report
    bad = damage in ("truncated", "flipped byte")
    assert report["bad_shards"] == bad and report["bad_entries"] == (n_victim if bad else 0)
    assert report["orphan_files"] == (damage == "orphan shard")
    assert report["temp_files"] == (damage == "temp file")
    assert store.verify(repair=True)["ok"]
    after = store.verify()
    assert after["ok"] and after["problems"] == [] and after["entries"] == 80 - bad * n_victim
    assert len(store.missing(sid, "head", digests(0, 80))) == bad * n_victim
    store.put(sid, digests(0, 80), {"head": feats(0, 80, 72)})  # recomputed rows go back in
    q, _ = ops.quantize_int8(torch.from_numpy(feats(0, 80, 72)))
    assert torch.equal(store.get(sid, "head", digests(0, 80)).values, q)


def test_damaged_shard_heals_itself_on_read(tmp_path):
    store = open_store(tmp_path)
    sid = store.space_id(DESC)
    store.put(sid, digests(0, 20), {"head": feats(0, 20, 72)})
    store.put(sid, digests(20, 30), {"head": feats(20, 30, 72)})
    store.close()
    _flip(max(shard_files(tmp_path), key=lambda p: p.stat().st_size))  # the 20-row shard
    log = io.StringIO()
    fresh = open_store(tmp_path, log)
    with pytest.raises(CacheMissError, match="20 of 30"):
        fresh.get(sid, "head", digests(0, 30))
    assert "is damaged (checksum mismatch)" in log.getvalue() and "20 rows" in log.getvalue()
    assert fresh.missing(sid, "head", digests(0, 30)) == list(range(20))
    assert fresh.put(sid, digests(0, 30), {"head": feats(0, 30, 72)}) == {"head": 20}
    assert fresh.get(sid, "head", digests(0, 30)).values.shape == (30, 72)
    assert fresh.verify()["ok"]


# ------------------------------------------------------------------ crashes and concurrency
def _writer(
    root: Path, lo: int, hi: int, batch: int, dtype: str = "int8", progress: int | None = None
) -> dict[str, int]:
    """Put images lo..hi-1 batch by batch; one byte to fd `progress` per batch that wrote rows."""
    store = open_store(root)
    sid = store.space_id(DESC, dtype)
    written = dict.fromkeys(WIDTHS, 0)
    for start in range(lo, hi, batch):
        stop = min(start + batch, hi)
        new = store.put(sid, digests(start, stop), stage_feats(start, stop))
        for stage, n in new.items():
            written[stage] += n
        if progress is not None and any(new.values()):
            os.write(progress, b".")
    return written


def _fork(fn, *args) -> int:
    """Run fn(*args) in a forked child that never returns into pytest."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            torch.set_num_threads(1)
            fn(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _expected(total: int, dtype: str = "int8") -> dict[str, tuple]:
    out = {}
    for stage, x in stage_feats(0, total).items():
        x = torch.from_numpy(x)
        out[stage] = ops.quantize_int8(x) if dtype == "int8" else (ops.quantize_fp16(x), None)
    return out


def _assert_stored_rows_correct(store: FeatureStore, sid: str, expected: dict, total: int):
    """Every row the store has reads back exactly as written. Returns rows present per stage."""
    present, names = {}, digests(0, total)
    for stage, (q, s) in expected.items():
        have = np.setdiff1d(np.arange(total), store.missing(sid, stage, names))
        got = store.get(sid, stage, [names[i] for i in have])
        index = torch.from_numpy(have)
        assert torch.equal(got.values, q[index]), stage
        assert s is None or torch.equal(got.scales, s[index]), stage
        present[stage] = len(have)
    return present


@needs_fork
def test_sigkill_at_random_points_never_leaves_a_bad_entry_and_resumes(tmp_path):
    total, batch, rng = 12_000, 100, random.Random(20240611)
    expected = _expected(total)
    first = open_store(tmp_path)
    sid = first.space_id(DESC, "int8")
    first.close()
    kills, strays = 0, []  # strays: temporaries and unindexed shards left by each kill
    for _ in range(6):  # each run: kill after 3-12 new batches plus a random part of the next
        read, write = os.pipe()
        pid = _fork(_writer, tmp_path, 0, total, batch, "int8", write)
        os.close(write)
        with os.fdopen(read, "rb", buffering=0) as progress:
            for _ in range(rng.randint(3, 12)):
                assert progress.read(1) == b"."
            time.sleep(rng.uniform(0.0, 0.02))
            os.kill(pid, signal.SIGKILL)
        kills += os.WIFSIGNALED(os.waitpid(pid, 0)[1])
        store = open_store(tmp_path)
        report = store.verify()
        assert report["bad_entries"] == 0 and report["bad_shards"] == 0, report
        strays.append(report["orphan_files"] + report["temp_files"])
        _assert_stored_rows_correct(store, sid, expected, total)
        # a kill leaves at most stray files (never a bad entry): repair removes them
        assert report["ok"] is (strays[-1] == 0)
        assert store.verify(repair=True)["ok"] is True and store.verify()["problems"] == []
        store.close()  # no SQLite state may cross the next fork
    assert kills == 6, strays
    store = open_store(tmp_path)
    todo = {s: len(store.missing(sid, s, digests(0, total))) for s in WIDTHS}
    assert 0 < todo["head"] <= total - 18 * batch, todo  # the kills left work undone
    assert _writer(tmp_path, 0, total, 1000) == todo  # the re-run writes only what is missing
    assert _assert_stored_rows_correct(store, sid, expected, total) == dict.fromkeys(WIDTHS, total)
    report = store.verify()
    assert report["ok"] and report["entries"] == 2 * total, report


def _crash_at(point: str, root: Path) -> None:  # pragma: no cover - runs in a child
    import automl_tl.features.store as cache

    store = open_store(root)
    sid = store.space_id(DESC, "int8")
    store.put(sid, digests(0, 50), stage_feats(0, 50))
    if point == "before rename":
        os.replace = lambda *a, **k: os._exit(9)
    elif point == "before commit":
        cache.fsync_dir = lambda path: os._exit(9)
    else:  # inside the transaction, entries inserted, COMMIT not run
        seen = []

        def trace(sql: str) -> None:
            seen.append(sql.startswith("INSERT OR IGNORE INTO entries"))
            if any(seen) and sql.startswith("COMMIT"):
                os._exit(9)

        store._db().set_trace_callback(trace)
    store.put(sid, digests(50, 100), stage_feats(50, 100))
    os._exit(0)  # not reached


@needs_fork
@pytest.mark.parametrize("point", ["before rename", "before commit", "during commit"])
def test_crash_at_each_step_of_a_put(tmp_path, point):
    pid = _fork(_crash_at, point, tmp_path)
    assert os.waitpid(pid, 0)[1] >> 8 == 9
    store = open_store(tmp_path)
    sid = store.space_id(DESC, "int8")
    report = store.verify()
    assert report["bad_entries"] == 0 and report["bad_shards"] == 0 and report["entries"] == 100
    strays = "temp_files" if point == "before rename" else "orphan_files"
    assert report[strays] == 2 and len(report["problems"]) == 2, report  # one per stage
    present = _assert_stored_rows_correct(store, sid, _expected(100), 100)
    assert present == dict.fromkeys(WIDTHS, 50)
    assert store.verify(repair=True)["ok"] and store.verify()["problems"] == []
    assert store.put(sid, digests(0, 100), stage_feats(0, 100)) == dict.fromkeys(WIDTHS, 50)


def _racer(root: Path, lo: int, hi: int, me: str, other: str) -> None:  # pragma: no cover
    (root / me).touch()
    while not (root / other).exists():  # start together
        time.sleep(0.001)
    written = _writer(root, lo, hi, 20, "fp16")
    (root / f"{me}.json").write_text(json.dumps(written))


@needs_fork
def test_two_processes_put_overlapping_digests(tmp_path):
    pids = [
        _fork(_racer, tmp_path, 0, 1200, "a", "b"),  # both open a fresh store at once
        _fork(_racer, tmp_path, 400, 1600, "b", "a"),
    ]
    assert [os.waitpid(pid, 0)[1] for pid in pids] == [0, 0]  # exit code 0, no signal
    written = [json.loads((tmp_path / f"{me}.json").read_text()) for me in "ab"]
    for stage in WIDTHS:  # each digest stored once, by whichever process committed first
        assert written[0][stage] + written[1][stage] == 1600
    store = open_store(tmp_path)
    sid = store.space_id(DESC, "fp16")
    present = _assert_stored_rows_correct(store, sid, _expected(1600, "fp16"), 1600)
    assert present == dict.fromkeys(WIDTHS, 1600)
    report = store.verify()
    assert report["ok"] and report["problems"] == [] and report["entries"] == 3200, report
    db = sqlite3.connect(store.dir / "index.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


# ------------------------------------------------------------------ command line
def _cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, ["cache", *args], input=input)


def test_cli_cache_info(tmp_path):
    store = open_store(tmp_path)
    sid = store.space_id(DESC)
    store.put(sid, digests(0, 100), stage_feats(0, 100))
    res = _cli("info", "--cache-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert (
        f"space {sid} (fp16, 200 entries)" in res.stdout
        and "backbone=efficientnet_lite0" in res.stdout
    )
    assert "200 entries in 2 shards" in res.stdout and "bytes per value" in res.stdout
    res = _cli("info", "--cache-dir", str(tmp_path), "--json")
    assert json.loads(res.stdout)["spaces"][0]["stages"]["head"]["entries"] == 100
    empty = _cli("info", "--cache-dir", str(tmp_path / "none"))
    assert empty.exit_code == 0 and "nothing stored yet" in empty.stdout


def test_cli_cache_verify_exit_codes(tmp_path):
    store = open_store(tmp_path)
    store.put(store.space_id(DESC), digests(0, 10), stage_feats(0, 10))
    assert _cli("verify", "--cache-dir", str(tmp_path)).exit_code == 0
    _flip(shard_files(tmp_path)[0])
    res = _cli("verify", "--cache-dir", str(tmp_path))
    assert res.exit_code == 1 and "checksum mismatch" in res.stdout
    assert res.stderr.strip().startswith("error: ") and "--repair" in res.stderr
    res = _cli("verify", "--repair", "--cache-dir", str(tmp_path), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["bad_shards"] == 1
    assert _cli("verify", "--cache-dir", str(tmp_path)).exit_code == 0


def test_cli_cache_clear(tmp_path):
    store = open_store(tmp_path)
    sid = store.space_id(DESC)
    store.put(sid, digests(0, 10), stage_feats(0, 10))
    res = _cli("clear", "--cache-dir", str(tmp_path), input="n\n")
    assert res.exit_code != 0 and store.info()["entries"] == 20  # declined: nothing deleted
    res = _cli("clear", "--yes", "--space", "nope", "--cache-dir", str(tmp_path))
    assert res.exit_code == 1 and "no single feature space" in res.stderr
    res = _cli("clear", "--yes", "--space", sid, "--cache-dir", str(tmp_path))
    assert res.exit_code == 0 and "removed 20 entries in 2 shards" in res.stdout
    assert store.info()["entries"] == 0


def test_cli_cache_info_and_clear_cover_everything_the_cache_holds(tmp_path):
    """Beside the features: exported graphs and composed models (models/), the memo of facts
    and built source banks; `cache clear --yes` removes them all, `--space` only features."""
    from automl_tl.features.memo import Memo

    store = open_store(tmp_path)
    store.put(store.space_id(DESC), digests(0, 10), stage_feats(0, 10))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "stages-x.onnx").write_bytes(b"m" * 5000)
    (tmp_path / "models" / "stages-x.json").write_text("{}")
    (tmp_path / "banks").mkdir()
    (tmp_path / "banks" / "b.npz").write_bytes(b"b" * 3000)
    memo = Memo(tmp_path)
    memo.put_many("audit-v1", {"d1": {"problem": None}, "d2": {"problem": None}})
    memo.close()
    info = json.loads(_cli("info", "--cache-dir", str(tmp_path), "--json").stdout)
    assert info["models"] == {"files": 2, "bytes": 5002}
    assert info["banks"] == {"files": 1, "bytes": 3000} and info["memo"]["facts"] == {"audit-v1": 2}
    assert info["total_bytes"] > info["bytes_on_disk"] + 8000
    text = _cli("info", "--cache-dir", str(tmp_path)).stdout
    assert "models: 2 files" in text and "memo: 2 facts" in text and "source banks: 1" in text
    res = _cli("clear", "--yes", "--cache-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "2 model files" in res.stdout and "2 remembered facts, 1 source banks" in res.stdout
    after = json.loads(_cli("info", "--cache-dir", str(tmp_path), "--json").stdout)
    assert (after["entries"], after["models"]["files"], after["banks"]["files"]) == (0, 0, 0)
    assert after["memo"]["facts"] == {}


def test_cli_cache_console_script(tmp_path):
    exe = Path(sys.executable).parent / "automl-tl"
    env = {**os.environ, "AUTOML_TL_CACHE_DIR": str(tmp_path)}
    store = open_store(tmp_path)
    store.space_id(DESC)
    store.close()
    (tmp_path / "features" / "shards" / "x.tmp").write_bytes(b"")
    res = subprocess.run([exe, "cache", "verify"], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "x.tmp" in res.stdout
    res = subprocess.run([exe, "cache", "info", "--json"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["location"] == str(tmp_path / "features")

"""Untrusted files and no network (issue #6, point 3).

Every file automl-tl reads that a user or another program could have replaced is fed a real
malicious pickle whose unpickling would create a marker file: weights given with --weights, a
fine-tuning checkpoint, the cache's onnxruntime export, a shard, the SQLite index and memo, a
source bank. Each is refused, ignored or rebuilt with one clear line, and the marker never
appears. A source scan keeps unsafe loaders out of automl_tl/. A complete fit and predict run
with every socket connect and DNS lookup blocked and recorded: nothing is attempted.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner

from automl_tl.cli import main
from automl_tl.core.errors import AutoTLError
from automl_tl.data.audit import audit
from automl_tl.data.demo import write_digits
from automl_tl.data.scan import scan
from automl_tl.decide.similarity import SourceBank
from automl_tl.features.cache import FeatureCache
from automl_tl.features.memo import Memo
from automl_tl.features.store import FeatureStore
from automl_tl.plugins.manager import get_plugins
from automl_tl.train.checkpoints import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# torch's weights-only unpickler notes the payloads' pickle protocol before refusing them
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


# ------------------------------------------------------------------ the payload
class _Payload:
    """Unpickling this calls exec(), which writes `marker`: proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('pickled code ran')"

    def __reduce__(self):
        return (builtins.exec, (self.code,))


def evil_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle of a would-be state dict holding the payload."""
    path.write_bytes(pickle.dumps({"conv.weight": _Payload(marker)}))
    return path


def evil_torch(path: Path, marker: Path, obj: str = "state_dict") -> Path:
    """torch.save's zip format, the payload inside (as a state dict or a checkpoint)."""
    torch.save({obj: _Payload(marker), "epoch": 1}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "pickled code ran"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("untrusted-data"), per_class=4, digits=(0, 1, 7))


def cli(*args):
    """The CLI in this process (faster than a subprocess); stderr kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _zip_member(path: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(suffix)))


def test_the_payloads_are_live(tmp_path):
    """Loaded the unsafe way, each payload does run: the marker checks below mean something."""
    for i, load in enumerate(
        [
            lambda p: pickle.loads(p.read_bytes()),
            lambda p: pickle.loads(_zip_member(p, "data.pkl")),  # what an unsafe load reads
        ]
    ):
        flag = tmp_path / f"live{i}"
        make = evil_pickle if i == 0 else evil_torch
        load(make(tmp_path / f"f{i}", flag))
        assert flag.read_text() == "pickled code ran"


# ------------------------------------------------------------------ weights and checkpoints
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("kind", ["pickle", "torch-zip", "fake-safetensors"])
def test_malicious_weights_file_is_refused(data, tmp_path, marker, backbone, kind):
    name = {"pickle": "w.pth", "torch-zip": "w.pt", "fake-safetensors": "w.safetensors"}[kind]
    make = evil_torch if kind == "torch-zip" else evil_pickle
    weights = make(tmp_path / name, marker)
    out = tmp_path / "r"
    res = cli("fit", data, "--backbone", backbone, "--weights", weights, "--out", out, "-q")
    assert res.exit_code == 1
    one_error_line(res.stderr, str(weights), "cannot be loaded safely")
    assert not (out / "model.onnx").exists()


def test_malicious_checkpoint_is_refused_by_the_loader(tmp_path, marker):
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(evil_torch(tmp_path / "finetune.pt", marker, obj="model"))
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(evil_pickle(tmp_path / "plain.pt", marker))


def test_malicious_finetune_checkpoint_is_ignored_on_resume(data, warm_cache, tmp_path, marker):
    """--resume with a planted checkpoints/pretrained/finetune.pt: a warning, fine-tuning from
    the start, a valid model, and the planted file gone with the finished run's checkpoints."""
    run = tmp_path / "run"
    ck = run / "checkpoints" / "pretrained" / "finetune.pt"
    ck.parent.mkdir(parents=True)
    evil_torch(ck, marker, obj="model")
    args = ["fit", data, "--case", "3", "--finetune-epochs", "1", "--resume", "--out", run]
    args += ["--backbone", "efficientnet_lite0"]
    args += ["--cache-dir", _copy(warm_cache, tmp_path / "cache")]
    res = subprocess.run(
        [sys.executable, "-m", "automl_tl", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    warning = [ln for ln in res.stderr.splitlines() if ln.startswith("WARNING: checkpoint")]
    assert len(warning) == 1 and "cannot be read safely" in warning[0], res.stderr
    assert "ignoring it and fine-tuning from the start" in warning[0]
    assert not ck.exists() and not (run / "checkpoints").exists()
    assert json.loads((run / "metrics.json").read_text())["export_check"]["passed"]


# ------------------------------------------------------------------ the cache folder
@pytest.fixture(scope="module")
def lite0():
    spec = get_plugins().backbone("efficientnet_lite0")
    return spec, spec.build(None)


@pytest.fixture(scope="module")
def warm_cache(data, lite0, tmp_path_factory) -> Path:
    """A cache as a fit on `data` leaves it: every stage's rows (computed with the torch engine,
    a handful of images) and the checked onnxruntime export of the backbone. Tests copy it."""
    root = tmp_path_factory.mktemp("warm-cache")
    cache = FeatureCache(*lite0, root, engine="torch")
    cache.stage_rows(audit(scan(data)).samples)
    cache.close()
    assert FeatureCache(*lite0, root).runner(n_images=1000).engine == "onnxruntime"
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _identity_onnx(path: Path) -> Path:
    """A valid ONNX graph of another model (image in, image out)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])
    y = helper.make_tensor_value_info("stage0", TensorProto.FLOAT, ["batch", 3, 224, 224])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["stage0"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("planted", ["pickle", "other-onnx"])
def test_planted_onnx_export_is_re_exported_never_loaded(
    lite0, warm_cache, tmp_path, marker, monkeypatch, planted
):
    """models/<key>.onnx replaced behind its sidecar: the checksum does not match, so the
    runner exports the backbone again; onnxruntime never opens the planted bytes."""
    spec, net = lite0
    root = _copy(warm_cache, tmp_path / "cache")
    cache = FeatureCache(spec, net, root)
    path = cache.model_dir / f"{cache.model_key}.onnx"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    if planted == "pickle":
        evil_pickle(path, marker)
    else:
        _identity_onnx(path)
    planted_sha = _sha(path)
    opened: list[str] = []
    real = onnxruntime.InferenceSession

    def spy(model, *args, **kwargs):
        opened.append(_sha(Path(model)))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    again = FeatureCache(spec, net, root).runner(n_images=1000)  # enough images to export
    assert again.engine == "onnxruntime"
    assert opened and planted_sha not in opened
    assert _sha(path) == json.loads(path.with_suffix(".json").read_text())["sha256"]
    assert sidecar["sha256"] != planted_sha
    batch = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    # one output per cached view (every stage, pooled to its grids)
    assert [o.shape[1] for o in again.run(batch)] == [v.width for v in cache.views]
    assert len(cache.views) > len(spec.stages)


def test_planted_onnx_export_never_ends_up_in_a_fit_model(data, lite0, warm_cache, tmp_path):
    """A warm fit composes model.onnx from the cached export: a valid graph of another model
    planted there (old sidecar) is exported again, never composed in."""
    root = _copy(warm_cache, tmp_path / "cache")
    path = root / "models" / f"{FeatureCache(*lite0, root).model_key}.onnx"
    planted_sha = _sha(_identity_onnx(path))
    out = tmp_path / "run"
    res = cli("fit", data, "--case", "1", "--epochs", "5", "--cache-dir", root, "--out", out, "-q")
    assert res.exit_code == 0, res.stderr
    assert json.loads((out / "metrics.json").read_text())["export_check"]["passed"]
    assert planted_sha != _sha(path) == json.loads(path.with_suffix(".json").read_text())["sha256"]
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("Conv") > 10  # the backbone, not the planted Identity


@pytest.mark.parametrize("planted", ["pickle", "other-onnx-with-its-own-sidecar"])
def test_planted_composed_model_never_becomes_model_onnx(
    data, warm_cache, tmp_path, marker, planted
):
    """A warm fit publishes the remembered composed model (models/composed-<key>.onnx) only
    when its sidecar sha256 matches; one whose sidecar was rewritten to match is caught by the
    export check. Either way the fit composes afresh and model.onnx is the genuine model."""
    root = _copy(warm_cache, tmp_path / "cache")
    args = ("fit", data, "--case", "1", "--epochs", "5", "--cache-dir", root, "-q")
    assert cli(*args, "--out", tmp_path / "first").exit_code == 0
    (memo,) = (root / "models").glob("composed-*.onnx")
    genuine = memo.read_bytes()
    assert genuine == (tmp_path / "first" / "model.onnx").read_bytes()
    if planted == "pickle":  # the old sidecar stays: the checksum no longer matches
        evil_pickle(memo, marker)
    else:  # a valid graph of another model, and a sidecar that vouches for it
        _identity_onnx(memo)
        memo.with_suffix(".json").write_text(json.dumps({"sha256": _sha(memo)}))
    planted_sha = _sha(memo)
    out = tmp_path / "second"
    res = cli(*args, "--out", out)
    assert res.exit_code == 0, res.stderr
    check = json.loads((out / "metrics.json").read_text())["export_check"]
    assert check["passed"] is True and check["reused_composition"] is False
    assert (out / "model.onnx").read_bytes() == genuine
    assert planted_sha != _sha(memo) == json.loads(memo.with_suffix(".json").read_text())["sha256"]


def test_planted_shard_is_dropped_and_recomputed(data, lite0, warm_cache, tmp_path, marker):
    root = _copy(warm_cache, tmp_path / "cache")
    shard = sorted((root / "features" / "shards").glob("*.shard"))[0]
    evil_pickle(shard, marker)
    res = cli("cache", "verify", "--cache-dir", root)
    assert res.exit_code == 1 and shard.name in res.stdout
    one_error_line(res.stderr, "has problems", "verify --repair")
    cache = FeatureCache(*lite0, root, engine="torch")
    samples = audit(scan(data)).samples
    cache.stage_rows(samples)  # warns, drops the shard's rows, recomputes them
    assert 0 < cache.stats.computed <= len(samples)
    assert cache.stats.hits + cache.stats.computed == len(samples)
    cache.close()
    assert not shard.exists()
    assert FeatureStore(root).verify()["ok"]


def test_planted_index_fails_with_one_line_naming_the_file_and_the_fix(
    data, warm_cache, tmp_path, marker
):
    root = _copy(warm_cache, tmp_path / "cache")
    index = root / "features" / "index.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{index}{extra}").unlink(missing_ok=True)
    evil_pickle(index, marker)
    for args in (["fit", data, "--out", tmp_path / "r"], ["cache", "info"], ["cache", "verify"]):
        res = cli(*args, "--cache-dir", root, *(["-q"] if args[0] == "fit" else []))
        assert res.exit_code == 1
        one_error_line(res.stderr, str(index), "unreadable", "delete the folder")
    shutil.rmtree(root / "features")  # the fix the message names
    assert cli("cache", "verify", "--cache-dir", root).exit_code == 0


def test_index_naming_files_outside_the_cache_never_touches_them(data, lite0, warm_cache, tmp_path):
    """A planted (valid SQLite) index whose shard names point outside the shard folder: the
    rows are dropped and recomputed, verify reports it, and neither reading, repairing nor
    clearing deletes the files it names."""
    root = _copy(warm_cache, tmp_path / "cache")
    victims = [tmp_path / f"precious{i}.txt" for i in range(3)]
    for v in victims:
        v.write_text("keep me")
    db = sqlite3.connect(root / "features" / "index.sqlite")
    ids = [r[0] for r in db.execute("SELECT id FROM shards ORDER BY id LIMIT 3")]
    for sid, victim in zip(ids, victims, strict=True):
        db.execute("UPDATE shards SET name = ? WHERE id = ?", (f"../../../{victim.name}", sid))
    db.commit()
    db.close()
    cache = FeatureCache(*lite0, root, engine="torch")
    cache.stage_rows(audit(scan(data)).samples)
    assert cache.stats.computed > 0
    cache.close()
    assert all(v.read_text() == "keep me" for v in victims)
    db = sqlite3.connect(root / "features" / "index.sqlite")
    _rename_first_shard(root, "../../../precious1.txt")
    report = FeatureStore(root).verify(repair=True)
    assert any("is not a shard file name" in p for p in report["problems"]), report
    _rename_first_shard(root, "../../../precious2.txt")
    FeatureStore(root).clear()
    assert all(v.read_text() == "keep me" for v in victims)


def _rename_first_shard(root: Path, name: str) -> None:
    db = sqlite3.connect(root / "features" / "index.sqlite")
    db.execute("UPDATE shards SET name = ? WHERE id = (SELECT MIN(id) FROM shards)", (name,))
    db.commit()
    db.close()


def test_planted_memo_is_started_afresh_with_a_warning(data, warm_cache, tmp_path, marker):
    """memo.sqlite holds only facts recomputed on demand: a file that is not one is replaced
    (one warning line) and the run goes on."""
    root = _copy(warm_cache, tmp_path / "cache")
    for extra in ("-wal", "-shm"):
        Path(f"{root / 'memo.sqlite'}{extra}").unlink(missing_ok=True)
    evil_pickle(root / "memo.sqlite", marker)
    args = ["--case", "1", "--epochs", "5", "--cache-dir", root, "--out", tmp_path / "r", "-q"]
    res = cli("fit", data, *args)
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and "memo.sqlite is not a readable memo" in warnings[0]
    assert "starting a new one" in warnings[0]
    assert Memo(root).counts()  # the new memo holds this run's facts
    # a SQLite file that is not a memo is replaced too
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / "memo.sqlite").execute("CREATE TABLE memo (x)").connection.close()
    Memo(other).put("ns", "k", {"v": 1})
    assert Memo(other).get("ns", "k") == {"v": 1}


# ------------------------------------------------------------------ source banks
def _bank(path: Path, marker: Path, field: str) -> Path:
    good = {
        "vectors": np.ones((3, 4), np.float16),
        "reference": np.zeros(3),
        "meta": np.array(json.dumps({"backbone": "x", "kind": "images", "description": "d"})),
    }
    good[field] = np.array([_Payload(marker)], dtype=object)
    np.savez(path, **good)
    return path


@pytest.mark.parametrize("field", ["vectors", "meta"])
def test_source_bank_with_an_object_array_is_refused(data, tmp_path, marker, field):
    bank = _bank(tmp_path / "bank.npz", marker, field)
    live = tmp_path / "live"
    np.load(_bank(tmp_path / "live.npz", live, field), allow_pickle=True)[field]
    assert live.exists()  # the unsafe way runs it
    with pytest.raises(AutoTLError, match="is not a source bank"):
        SourceBank.load(bank)
    res = cli("source-bank", "show", bank)
    assert res.exit_code == 1
    one_error_line(res.stderr, str(bank), "is not a source bank", "source-bank build")
    res = cli("fit", data, "--source-bank", bank, "--out", tmp_path / "r", "-q")
    assert res.exit_code == 1
    one_error_line(res.stderr, str(bank), "is not a source bank")


def test_source_bank_with_wrong_metadata_is_refused_in_one_line(tmp_path):
    for i, meta in enumerate(["{}", "[1]", "null"]):
        path = tmp_path / f"b{i}.npz"
        np.savez(path, vectors=np.ones((3, 4)), reference=np.zeros(3), meta=np.array(meta))
        res = cli("source-bank", "show", path)
        assert res.exit_code == 1
        one_error_line(res.stderr, str(path), "is not a source bank")


# ------------------------------------------------------------------ source guard
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _const_kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def test_no_unsafe_loader_in_the_package():
    """torch.load only with weights_only=True; no pickle / marshal / joblib / dill loads and
    no np.load with allow_pickle=True anywhere in automl_tl/."""
    unsafe_calls = {
        "pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
        "marshal.load", "marshal.loads", "joblib.load", "dill.load", "dill.loads",
        "torch.jit.load", "torch.package.PackageImporter",
    }  # fmt: skip
    problems = []
    files = sorted((ROOT / "automl_tl").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(ROOT)
        for call, name in _calls(tree):
            if name in unsafe_calls:
                problems.append(f"{rel}:{call.lineno} {name}(...)")
            elif name == "torch.load" and _const_kw(call, "weights_only") is not True:
                problems.append(f"{rel}:{call.lineno} torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _const_kw(call, "allow_pickle") not in (
                None,
                False,
            ):
                problems.append(f"{rel}:{call.lineno} {name} with allow_pickle")
        for node in ast.walk(tree):  # `from pickle import load` and friends
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "marshal", "dill"):
                problems.append(f"{rel}:{node.lineno} from {node.module} import ...")
    assert problems == []


def test_the_guard_catches_what_it_should():
    load = "torch" + ".load"  # spelled apart so source scanners do not flag this sample
    src = f"{load}(p)\n{load}(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
    src += f"pickle.loads(b)\n{load}(p, weights_only=True)\nnp.load(p)\n"
    flagged = [name for _, name in _calls(ast.parse(src))]
    assert flagged.count("torch.load") == 3 and "pickle.loads" in flagged
    calls = [c for c, n in _calls(ast.parse(src)) if n == "torch.load"]
    assert [_const_kw(c, "weights_only") for c in calls] == [None, False, True]


# ------------------------------------------------------------------ no network
_BLOCKER = """
    import os, socket

    _LOG = os.environ["AUTOML_TL_TEST_NET_LOG"]

    def _blocked(what, args):
        with open(_LOG, "a") as fh:
            fh.write(f"{what} {args!r} pid={os.getpid()}\\n")
        raise OSError(f"network blocked by the test: {what} {args!r}")

    socket.socket.connect = lambda self, address: _blocked("connect", address)
    socket.socket.connect_ex = lambda self, address: _blocked("connect_ex", address)
    socket.create_connection = lambda address, *a, **k: _blocked("create_connection", address)
    socket.getaddrinfo = lambda host, port, *a, **k: _blocked("getaddrinfo", (host, port))
    socket.gethostbyname = lambda host: _blocked("gethostbyname", host)
    socket.gethostbyname_ex = lambda host: _blocked("gethostbyname_ex", host)
"""


@pytest.fixture
def offline(tmp_path):
    """Run `python -m automl_tl ...` with every connect and DNS lookup blocked and logged
    (a sitecustomize on PYTHONPATH); returns (run, log path)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(_BLOCKER))
    log = tmp_path / "net.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "AUTOML_TL_TEST_NET_LOG": str(log),
        "TORCH_HOME": str(tmp_path / "torch-home"),  # no downloaded torchvision weights
    }
    env.pop("AUTOML_TL_ALLOW_DOWNLOAD", None)

    def run(*args, python=("-m", "automl_tl")):
        cmd = [sys.executable, *python, *map(str, args)]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)

    probe = run(python=("-c", "import socket; socket.getaddrinfo('example.com', 443)"))
    assert probe.returncode != 0 and "network blocked by the test" in probe.stderr
    assert "getaddrinfo ('example.com', 443)" in log.read_text()
    log.unlink()
    return run, log


def test_fit_and_predict_never_touch_the_network(offline, data, warm_cache, tmp_path):
    run, log = offline
    out, cache = tmp_path / "run", _copy(warm_cache, tmp_path / "cache")
    res = run("fit", data, "--epochs", "10", "--cache-dir", cache, "--out", out)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "metrics.json").read_text())["export_check"]["passed"]
    res = run("predict", out / "model.onnx", data)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == len(list(data.rglob("*.png")))
    assert not log.exists(), log.read_text()


def test_missing_torchvision_weights_stop_without_a_connection(offline, data, tmp_path):
    run, log = offline
    res = run("fit", data, "--backbone", "resnet18", "--out", tmp_path / "r", "-q")
    assert res.returncode == 1
    line = one_error_line(res.stderr, "no weights for resnet18", "--allow-download")
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-") in line
    assert not log.exists(), log.read_text()


def test_allowed_download_when_offline_fails_in_one_line(offline, data, tmp_path):
    run, log = offline
    args = ["--backbone", "resnet18", "--allow-download", "--out", tmp_path / "r", "-q"]
    res = run("fit", data, *args)
    assert res.returncode == 1
    one_error_line(res.stderr, "downloading weights for resnet18", "failed", "--weights PATH")
    assert "download.pytorch.org" in log.read_text()  # it tried, as allowed, and was blocked
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # no partial file

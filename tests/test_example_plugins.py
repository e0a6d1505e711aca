"""The example plugin packages in plugins/, installed the way a stranger would install them
and used through their entry points, in fresh `automl-tl` processes.

They are installed into a temporary folder of the session (`pip install --target`), never
into this environment: the processes started here find them on PYTHONPATH
(importlib.metadata reads their entry points from the dist-info there), and this process
never loads them. tinycnn also goes through the backbone contract test that way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest

from automl_tl.data.demo import write_digits

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "automl-tl-tinycnn": ROOT / "plugins" / "automl-tl-tinycnn",
    "automl-tl-knn": ROOT / "plugins" / "automl-tl-knn",
}
CLI = str(Path(sys.executable).parent / "automl-tl")
# Each command runs in a new process because plugin discovery is cached per process. Most
# load only the plugins they need (AUTOML_TL_PLUGINS): importing torchvision and timm for
# plugins no check uses costs seconds per process, and keeps other plugins out of the way.
ONLY = "efficientnet_lite,strategies,tinycnn,knn"


def pip_install_to(target: Path, sources: list[Path], scratch: Path) -> None:
    """`pip install --target` without touching this environment, the sources or the user's
    pip cache: built from copies (an in-tree build writes build/ and *.egg-info), no
    dependencies (they are automl-tl's own), no build isolation (setuptools is here)."""
    copies = []
    for src in sources:
        copy = scratch / src.name
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("tests", "__pycache__"))
        copies.append(str(copy))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-cache-dir"]
    cmd += ["--no-build-isolation", "--disable-pip-version-check", "--target", str(target)]
    res = subprocess.run([*cmd, *copies], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def with_pythonpath(env: dict[str, str], folder: Path) -> dict[str, str]:
    parts = [str(folder), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(parts)}


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory) -> Path:
    """A folder holding both packages as installed (modules + dist-info with entry points)."""
    target = tmp_path_factory.mktemp("example-plugins")
    pip_install_to(target, list(PACKAGES.values()), tmp_path_factory.mktemp("plugin-src"))
    return target


@pytest.fixture(scope="session")
def example_plugins(plugin_dir) -> dict[str, str]:
    """{distribution: version} of the installed packages, read from plugin_dir only."""
    found = {d.metadata["Name"]: d.version for d in metadata.distributions(path=[str(plugin_dir)])}
    assert set(found) == set(PACKAGES), found
    return found


# Package tests left out here because a test below covers the same path: the knn
# package's own end-to-end fit on the default backbone = test_fit_with_the_faiss_knn_strategy.
DESELECT = {
    "automl-tl-knn": ["--deselect", "tests/test_knn.py::test_fit_with_the_default_backbone"]
}


def _own_tests(name: str, plugin_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOML_TL_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DESELECT.get(name, [])],
        cwd=PACKAGES[name],
        capture_output=True,
        text=True,
        env=with_pythonpath({**env, "AUTOML_TL_PLUGINS": ONLY}, plugin_dir),
    )


@pytest.fixture(scope="module", autouse=True)
def package_suites(plugin_dir, request):
    """The packages' own test suites (those selected), started before the first test of this
    module and run one after the other in the background, overlapping the CLI checks;
    returns futures."""
    selected = {
        item.callspec.params["package"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_package_own_tests"
    }
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield {name: pool.submit(_own_tests, name, plugin_dir) for name in sorted(selected)}


PLUGIN_DIR: Path | None = None  # set for this module's tests by _pythonpath


@pytest.fixture(scope="module", autouse=True)
def _pythonpath(plugin_dir):
    """Where run() finds the installed packages."""
    global PLUGIN_DIR
    PLUGIN_DIR = plugin_dir
    yield
    PLUGIN_DIR = None


def run(*args, env: dict | None = None, only: str | None = ONLY):
    """`automl-tl ARGS` in a new process that sees the installed example packages; the
    caller's AUTOML_TL_* variables do not leak in."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("AUTOML_TL_")}
    if only:
        full["AUTOML_TL_PLUGINS"] = only
    full.update(env or {})
    full = with_pythonpath(full, PLUGIN_DIR)
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=full)


def run_json(*args, **kwargs):
    res = run(*args, **kwargs)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def items(*args, **kwargs) -> dict[str, dict]:
    listing = run_json(*args, **kwargs)
    return {row["name"]: row for row in listing["items"]}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=10, digits=(0, 1, 7))


def fit(digits, out, *options, env=None):
    summary = run_json("fit", digits, "--json", "--out", out, *options, env=env)
    assert summary["export_check"]["passed"] is True
    assert Path(summary["model"]).is_file()
    return summary


def predicts(model: str, folder: Path, classes: list[str]) -> None:
    res = run("predict", model, folder, "--json", "-k", "2")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == len(list(folder.glob("*.png")))
    assert all(len(r["top"]) == 2 and r["top"][0][0] in classes for r in rows)


def test_plugins_listed_with_their_versions(example_plugins):
    # All plugins loaded here: the examples must load beside every built-in one.
    listing = run_json("plugins", "--json", only=None)
    rows = {row["name"]: row for row in listing["items"]}
    assert rows["tinycnn"]["version"] == example_plugins["automl-tl-tinycnn"]
    assert rows["knn"]["version"] == example_plugins["automl-tl-knn"]
    assert rows["tinycnn"]["hooks"] == "register_backbones"
    assert rows["knn"]["hooks"] == "register_commands,register_strategies,select_strategy"
    assert "efficientnet_lite" in rows and "strategies" in rows
    assert "tinycnn" not in listing["failures"] and "knn" not in listing["failures"]


def test_backbones_lists_tinycnn(example_plugins):
    row = items("backbones", "--json")["tinycnn"]
    assert row["plugin"] == "tinycnn" and row["input"] == 64 and row["stages"] == 3
    assert row["offline_weights"] == "no"  # the template ships no weight file


def test_strategies_lists_faiss_knn(example_plugins):
    row = items("strategies", "--json")["faiss_knn"]
    assert row["plugin"] == "knn" and row["case"] == "-"


def test_fit_with_the_tinycnn_backbone(example_plugins, digits, tmp_path):
    # Case 1 pinned: the planner's verdict on an untrained template is not what is tested.
    args = ("--backbone", "tinycnn", "--case", "1", "--epochs", "20")
    summary = fit(digits, tmp_path / "run", *args)
    assert summary["backbone"] == "tinycnn" and summary["strategy"] == "linear_head"
    predicts(summary["model"], digits / "7", summary["classes"])


def test_fit_with_the_faiss_knn_strategy(example_plugins, digits, tmp_path):
    summary = fit(digits, tmp_path / "run", "--strategy", "faiss_knn")
    assert summary["backbone"] == "efficientnet_lite0" and summary["strategy"] == "faiss_knn"
    assert summary["val_accuracy"] >= 0.8  # digits 0/1/7 on ImageNet features: easy
    (entry,) = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert entry["epoch"] == 1 and entry["k"] >= 1
    predicts(summary["model"], digits / "0", summary["classes"])


def test_select_strategy_hook_picks_faiss_knn_when_asked(example_plugins, digits, tmp_path):
    env = {"AUTOML_TL_KNN_AUTO": "1"}
    summary = fit(digits, tmp_path / "run", "--backbone", "tinycnn", env=env)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert summary["strategy"] == plan["strategy"] == "faiss_knn"
    assert any("plugin knn" in r and "faiss_knn" in r for r in plan["reasons"])


def test_disabled_plugin_hides_its_strategy(example_plugins):
    names = items("strategies", "--json", env={"AUTOML_TL_DISABLE_PLUGINS": "knn"})
    assert "faiss_knn" not in names and "linear_head" in names


def test_plugin_command(example_plugins):
    res = run("knn-info")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"automl-tl-knn {example_plugins['automl-tl-knn']}:")


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_own_tests(package_suites, package):
    """Each example's own test suite, run as its author would: pytest in its folder."""
    res = package_suites[package].result(timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout.splitlines()[-1] and "skipped" not in res.stdout


def test_tinycnn_passes_the_backbone_contract(plugin_dir):
    """tests/test_backbone_contract.py in a process that sees the installed packages:
    tinycnn is parametrised in beside the built-in backbones (-k keeps only it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOML_TL_")}
    env = with_pythonpath({**env, "AUTOML_TL_PLUGINS": ONLY}, plugin_dir)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-k", "tinycnn",
         "tests/test_backbone_contract.py"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    ran = {
        ln.split("::")[1].split("[")[0]: ln.split("] ")[1].split()[0]
        for ln in res.stdout.splitlines()
        if "[tinycnn] " in ln
    }
    # The template ships no source classifier: that one check skips itself, the rest pass.
    assert ran.pop("test_source_classifier_reproduces_the_source_model") == "SKIPPED"
    assert ran == {
        "test_every_backbone_keeps_the_contract": "PASSED",
        "test_the_contract_check_names_what_is_broken": "PASSED",
        "test_onnx_export_of_backbone_and_new_head_matches_torch": "PASSED",
    }, res.stdout[-3000:]

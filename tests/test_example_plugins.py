"""The example plugin packages in plugins/, installed into this environment and used the way
a stranger would: through their entry points, in fresh `automl-tl` processes.

Installing is session-scoped and idempotent (skipped when this environment already has the
same editable install). The packages stay installed afterwards, so every other test runs
with them loaded too: tinycnn goes through the backbone contract test, and knn's
select_strategy hook must stay inert unless AUTOML_TL_KNN_AUTO=1.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import site
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest

from automl_tl.demo import write_digits

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: no TOML parser at hand, reinstall every session
    tomllib = None

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


def _pyproject(path: Path) -> dict | None:
    return tomllib.loads((path / "pyproject.toml").read_text())["project"] if tomllib else None


def _up_to_date(dist: str, path: Path) -> bool:
    """True when `dist` is installed editable from `path` with the same version and entry
    points as its pyproject.toml (code changes need no reinstall in editable mode)."""
    project = _pyproject(path)
    try:
        installed = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    direct = json.loads(installed.read_text("direct_url.json") or "{}")
    if project is None or direct.get("url") != path.as_uri():
        return False
    entry_points = {ep.name: ep.value for ep in installed.entry_points if ep.group == "automl_tl"}
    return (
        direct.get("dir_info", {}).get("editable") is True
        and installed.version == project["version"]
        and entry_points == project["entry-points"]["automl_tl"]
    )


@pytest.fixture(scope="session")
def example_plugins() -> dict[str, str]:
    """Install both packages into this environment (editable, no dependencies: they are
    automl-tl's own); returns {distribution: version}."""
    # A lock, because another test session may be installing into the same environment.
    with open(Path(sys.prefix) / ".automl-tl-example-plugins.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stale = [str(p) for d, p in PACKAGES.items() if not _up_to_date(d, p)]
        if stale:
            cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
            cmd += ["--no-build-isolation", *(a for p in stale for a in ("-e", p))]
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0, res.stdout + res.stderr
            # This process started before the install: run the new .pth hooks of the
            # editable installs so their entry points are importable here too (other
            # tests load plugins in-process and expect no load failures).
            site.addsitedir(sysconfig.get_paths()["purelib"])
            importlib.invalidate_caches()
    return {d: metadata.version(d) for d in PACKAGES}


# Package tests left out here because a test below covers the same path: the knn
# package's own end-to-end fit on the default backbone = test_fit_with_the_faiss_knn_strategy.
DESELECT = {
    "automl-tl-knn": ["--deselect", "tests/test_knn.py::test_fit_with_the_default_backbone"]
}


def _own_tests(name: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOML_TL_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DESELECT.get(name, [])],
        cwd=PACKAGES[name],
        capture_output=True,
        text=True,
        env={**env, "AUTOML_TL_PLUGINS": ONLY},
    )


@pytest.fixture(scope="module", autouse=True)
def package_suites(example_plugins, request):
    """The packages' own test suites (those selected), started before the first test of this
    module and run one after the other in the background, overlapping the CLI checks;
    returns futures."""
    selected = {
        item.callspec.params["package"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_package_own_tests"
    }
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield {name: pool.submit(_own_tests, name) for name in sorted(selected)}


def run(*args, env: dict | None = None, only: str | None = ONLY):
    """`automl-tl ARGS` in a new process; the caller's AUTOML_TL_* variables do not leak in."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("AUTOML_TL_")}
    if only:
        full["AUTOML_TL_PLUGINS"] = only
    full.update(env or {})
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
    summary = fit(digits, tmp_path / "run", "--backbone", "tinycnn", "--epochs", "20")
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

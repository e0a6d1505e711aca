"""Shared fixtures: generated sample data, one small fitted model, the shared real datasets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl_tl.data.demo import write_digits


def pytest_addoption(parser):
    parser.addoption(
        "--clock-scale",
        type=float,
        default=None,
        help="make every duration automl-tl measures in the test process F times what it is: "
        "the machine then seems F times slower (F > 1) or faster (F < 1) to the engine; the "
        "tests' own waits (for a subprocess, a browser) keep the real clock",
    )


class _ScaledTime:
    """The `time` module as automl-tl's modules see it under --clock-scale: perf_counter and
    monotonic run `factor` times as fast from now on; everything else is time's own."""

    def __init__(self, factor: float):
        self._factor = factor
        self._starts = {name: getattr(time, name)() for name in ("perf_counter", "monotonic")}

    def _scaled(self, name: str) -> float:
        start = self._starts[name]
        return start + (getattr(time, name)() - start) * self._factor

    def perf_counter(self) -> float:
        return self._scaled("perf_counter")

    def monotonic(self) -> float:
        return self._scaled("monotonic")

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture(autouse=True)
def scaled_clock(request, monkeypatch):
    """With --clock-scale F, every automl_tl module that imported `time` sees a clock F times
    as fast (all of them are imported first): a test whose outcome depends on how fast the
    machine is fails under one F or another."""
    factor = request.config.getoption("--clock-scale")
    if factor:
        import importlib
        import pkgutil

        import automl_tl

        for info in pkgutil.walk_packages(automl_tl.__path__, "automl_tl."):
            if not info.name.endswith("__main__"):  # that one runs the CLI
                importlib.import_module(info.name)
        clock = _ScaledTime(factor)
        for name, module in list(sys.modules.items()):
            if name.startswith("automl_tl") and getattr(module, "time", None) is time:
                monkeypatch.setattr(module, "time", clock)
    yield


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Every test (and the CLI subprocesses it starts) uses one fresh cache folder of the
    session, never the user's ~/.cache/automl-tl. Tests about cold starts make their own."""
    folder = tmp_path_factory.mktemp("automl-tl-cache")
    os.environ["AUTOML_TL_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """Three digit classes from scikit-learn's bundled digits, 16 PNGs each."""
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=16, digits=(0, 1, 7))


@pytest.fixture(scope="session")
def fitted(digits_dir, tmp_path_factory):
    """One AutoTransfer fitted on digits_dir (real backbone, real weights)."""
    from automl_tl import AutoTransfer

    out = tmp_path_factory.mktemp("run")
    return AutoTransfer(epochs=40, out=out, quiet=True).fit(digits_dir)


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium(pytestconfig) -> str:
    """Path of a headless-capable Chromium. When missing and running as root, it is installed
    once as a SYSTEM package with apt-get (Debian's `chromium`; stays installed afterwards,
    outside .venv); otherwise the test is skipped with the reason."""
    exe = _find_chromium()
    if exe is None:
        if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(
                "chromium is not installed and cannot be installed here (needs root and "
                "apt-get; install the system package yourself: apt-get install chromium)"
            )
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(
                "\ninstalling the system package chromium with apt-get for the report tests "
                "(a minute or two; it stays installed, outside .venv: apt-get remove chromium)..."
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        exe = _find_chromium()
        if done.returncode != 0:
            pytest.skip(
                "installing the system package chromium failed (apt-get install chromium): "
                f"{done.stderr.strip()[-300:]}"
            )
        if exe is None:
            pytest.skip("apt-get installed the system package chromium but it is not on PATH")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0:
        pytest.skip(f"{exe} --version failed: {version.stderr.strip()[-300:]}")
    return exe

"""The README's "Writing a plugin" example works when copied: install, list, fit, export.
It is installed into a temporary folder that only this test's processes see (PYTHONPATH)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from automl_tl.data.demo import write_digits

README = Path(__file__).resolve().parents[1] / "README.md"
CLI = str(Path(sys.executable).with_name("automl-tl"))


def _readme_files() -> dict[str, str]:
    """Code blocks whose first line is a comment naming a file under my-plugin/."""
    blocks = re.findall(r"```(?:toml|python)\n(.*?)```", README.read_text(), flags=re.S)
    files = {}
    for block in blocks:
        first = block.splitlines()[0]
        m = re.match(r"# (my-plugin/\S+)$", first)
        if m:
            files[m.group(1)] = block
    return files


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The copied plugin installed into a temporary folder (never this environment); returns
    the environment for the processes that should see it."""
    root = tmp_path_factory.mktemp("copied")
    files = _readme_files()
    assert set(files) == {"my-plugin/pyproject.toml", "my-plugin/my_plugin.py"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    pip += ["--no-cache-dir", "--disable-pip-version-check", "--target", str(target)]
    res = subprocess.run([*pip, str(root / "my-plugin")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (target / "my_plugin.py").is_file()
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def test_copied_plugin_is_listed_and_trains(installed, tmp_path):
    res = subprocess.run([CLI, "strategies", "--json"], capture_output=True, text=True,
                         env=installed)  # fmt: skip
    assert res.returncode == 0, res.stderr
    items = {i["name"]: i for i in json.loads(res.stdout)["items"]}
    assert items["centroid"]["plugin"] == "centroid"
    data = write_digits(tmp_path / "d", per_class=8, digits=(0, 1))
    res = subprocess.run(
        [CLI, "fit", str(data), "--strategy", "centroid", "--out", str(tmp_path / "r"), "--json"],
        capture_output=True, text=True, env=installed,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["strategy"] == "centroid" and summary["export_check"]["passed"]
    assert summary["val_accuracy"] >= 0.75  # digits 0 vs 1 are easy even for centroids


def test_without_the_folder_the_plugin_is_absent(installed):
    """Installed for this test's processes only: a process without it does not see it."""
    res = subprocess.run([CLI, "strategies", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "centroid" not in {i["name"] for i in json.loads(res.stdout)["items"]}

"""Shared fixtures: generated sample data, one small fitted model, the shared real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl_tl.demo import write_digits

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def shared_dataset(name: str) -> Path:
    """Path of a dataset in ../shared/datasets, or skip the test with the reason."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real dataset {path} is absent (it lives beside the checkout in shared/)")
    return path


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

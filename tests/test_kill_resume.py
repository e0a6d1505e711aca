"""Kill and resume through the real CLI, the suite's short version of benchmarks/kill_loop.py
(issue #6, point 2): SIGKILL inside embedding and inside head training, each followed by the
same command, and Ctrl-C during fine-tuning followed by `--resume`. After every interruption
`automl-tl cache verify` is clean; every re-run resumes and leaves a valid model.

The runs' stderr is a pseudo-terminal (benchmarks.kill_loop.Watched), so progress bars redraw
live and a kill can be aimed at a phase by what the bar shows.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from automl_tl.data.demo import write_digits
from benchmarks.kill_loop import (
    Watched,
    check_model,
    checkpoint_epoch,
    cli,
    committed_images,
    resumed_from,
    verify_cache,
)

CHUNK = 256  # rows FeatureCache commits at once (its default `chunk`)
BATCH = 16


def _bar(seg, label: str):
    b = seg.bar()
    return b if b is not None and b[0] == label else None


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """320 images: more than one commit of the feature cache (256 rows) plus four batches."""
    return write_digits(tmp_path_factory.mktemp("kill-digits"), per_class=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill-cache")


def fit_args(digits: Path, cache: Path, out: Path, case: str = "1") -> list:
    """`--case 1`: one head; `--case 2`: a head measured on every cached view first. One
    backbone: the kills aim at one fit's embedding and head fitting (the search's further
    backbones would embed after the kill)."""
    args = ["fit", digits, "--case", case, "--batch-size", str(BATCH)]
    args += ["--backbone", "efficientnet_lite0"]
    return args + ["--cache-dir", cache, "--out", out]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_sigkill_in_embedding_then_the_same_command_reuses_the_committed_rows(
    digits, cache, tmp_path
):
    n = len(list(digits.rglob("*.png")))
    args = fit_args(digits, cache, tmp_path / "run")
    run = Watched(args)
    # A bar past the first commit: the put of rows 1..256 ran before this batch was drawn.
    seg = run.wait_for(lambda s: (b := _bar(s, "embed")) and CHUNK < b[1] < b[2], 900)
    assert run.kill() == -signal.SIGKILL
    assert not (tmp_path / "run" / "metrics.json").exists(), seg
    assert verify_cache(cache) == (True, "clean")
    assert committed_images(cache) == CHUNK

    res = cli(*args)
    assert res.returncode == 0, res.stderr
    stats = metrics(tmp_path / "run")["feature_cache"]
    assert (stats["hits"], stats["computed"]) == (CHUNK, n - CHUNK)  # nothing recomputed
    assert check_model(tmp_path / "run", digits / "3") == []
    assert verify_cache(cache) == (True, "clean")


@pytest.fixture
def warm(digits, cache, tmp_path) -> Path:
    """The module cache holding every image's rows (filled by a fit unless already there)."""
    n = len(list(digits.rglob("*.png")))
    if committed_images(cache) < n:
        res = cli(*fit_args(digits, cache, tmp_path / "warm-up"))
        assert res.returncode == 0, res.stderr
    assert committed_images(cache) == n
    return cache


def _kill_in_training(args) -> bool:
    """SIGKILL the run as soon as its frozen heads start being fitted (the `candidates` bar:
    one head per cached view); True when the run had not finished them (no final bar)."""
    run = Watched(args, nice=10)
    run.wait_for(lambda s: _bar(s, "candidates"), 900)
    assert run.kill() == -signal.SIGKILL
    return not any(s.final and _bar(s, "candidates") for s in run.segments)


def test_sigkill_in_head_training_then_the_same_command_computes_nothing(digits, warm, tmp_path):
    n = len(list(digits.rglob("*.png")))
    out = tmp_path / "run"
    args = fit_args(digits, warm, out, case="2")
    for _ in range(4):  # 23 heads take a few seconds: a busy machine may still miss them
        if _kill_in_training(args):
            break
    else:
        pytest.fail("four kills aimed at head fitting all landed after it")
    assert not (out / "metrics.json").exists()
    assert verify_cache(warm) == (True, "clean")

    res = cli(*args)
    assert res.returncode == 0, res.stderr
    stats = metrics(out)["feature_cache"]
    assert (stats["hits"], stats["computed"]) == (n, 0)
    assert check_model(out, digits / "5") == []


@pytest.fixture
def small(digits, tmp_path) -> Path:
    """3 classes x 5 images, copies of module images (their rows are cached already)."""
    for c in ("0", "1", "7"):
        (tmp_path / "small" / c).mkdir(parents=True)
        for f in sorted((digits / c).glob("*.png"))[:5]:
            shutil.copy(f, tmp_path / "small" / c / f.name)
    return tmp_path / "small"


def test_ctrl_c_during_finetuning_exits_130_with_one_line_and_resume_completes(
    small, warm, tmp_path
):
    out = tmp_path / "run"
    # Six epochs of ~1.5 s: the interrupt lands while epochs are left even when a busy
    # machine delays the watcher (with two, the run once finished before SIGINT arrived).
    epochs = 6
    args = ["fit", small, "--case", "3", "--finetune-epochs", str(epochs), "--cache-dir", warm]
    args += ["--backbone", "efficientnet_lite0"]
    args += ["--out", out]
    run = Watched(args)
    run.wait_for(lambda s: "| val loss" in s.text, 900)  # epoch 1 checkpointed and reported
    run.signal(signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
    assert run.finish(300) == 130, run.text
    assert "Traceback" not in run.text
    lines = [s.text for s in run.segments if s.final]
    said = [ln for ln in lines if "interrupted" in ln or "--resume" in ln]
    assert len(said) == 1 and said[0] == lines[-1], run.text
    assert "repeat the command with the same --out and add --resume" in said[0]
    done = checkpoint_epoch(out)
    assert 1 <= done < epochs
    assert not (out / "model.onnx").exists()
    assert verify_cache(warm) == (True, "clean")

    res = cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert resumed_from(res.stderr) == done
    history = [h["epoch"] for h in metrics(out)["history"]]  # early stopping may end it sooner
    assert history == list(range(1, len(history) + 1)) and len(history) > done
    assert check_model(out, small / "7") == []

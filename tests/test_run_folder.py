"""One run folder, one run (issue #10, point A): a finished run is kept unless --overwrite,
a folder another process is fitting into is refused naming that process, and the lock goes
with the process that held it (a killed run never blocks the next one)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from automl_tl import AutoTransfer
from automl_tl.core.errors import BackboneError, OutputError
from automl_tl.data.demo import write_digits
from automl_tl.report.run_folder import LOCK_NAME, RunFolder

CLI = str(Path(sys.executable).with_name("automl-tl"))
FIT = ["--case", "1", "--epochs", "5", "-q"]


def fit(data: Path, out: Path, *extra: str) -> list[str]:
    return [CLI, "fit", str(data), "--out", str(out), *FIT, *extra]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> tuple[Path, Path]:
    """Two small real datasets told apart by their classes: digits 0/1 and 3/7."""
    root = tmp_path_factory.mktemp("two-sets")
    return (
        write_digits(root / "a", per_class=8, digits=(0, 1)),
        write_digits(root / "b", per_class=8, digits=(3, 7)),
    )


CLASSES = {"a": ["0", "1"], "b": ["3", "7"]}


def classes(out: Path) -> list[str]:
    return json.loads((out / "classes.json").read_text())


@pytest.fixture(scope="module")
def raced(two_sets, tmp_path_factory) -> tuple[Path, str, dict]:
    """Two fits, one per dataset, started at once into one --out; returns (folder, the
    winner's name, {name: (process, exit code, stderr)})."""
    out = tmp_path_factory.mktemp("raced") / "run"
    procs = {
        name: subprocess.Popen(fit(data, out), stderr=subprocess.PIPE, text=True)
        for name, data in zip("ab", two_sets, strict=True)
    }
    errs = {n: p.communicate(timeout=600)[1] for n, p in procs.items()}
    done = {n: (p, p.returncode, errs[n]) for n, p in procs.items()}
    winners = [n for n, (_, code, _) in done.items() if code == 0]
    return out, (winners[0] if len(winners) == 1 else ""), done


def test_two_fits_started_together_exactly_one_runs(raced):
    out, won, done = raced
    codes = {n: code for n, (_, code, _) in done.items()}
    assert sorted(codes.values()) == [0, 1], done
    (lost,) = set(done) - {won}
    line = one_line_error(subprocess.CompletedProcess([], 1, "", done[lost][2]))
    # Refused while the winner runs, or (a start delayed past its end) after it finished.
    assert (
        f"is in use by process {done[won][0].pid} (automl-tl fit" in line
        or "already holds a finished run" in line
    ), line
    assert classes(out) == CLASSES[won]
    assert json.loads((out / "metrics.json").read_text())["export_check"]["passed"] is True


def test_finished_run_is_kept_unless_overwrite(two_sets, raced):
    out, won, _ = raced
    if not won:
        pytest.fail("the race left no finished run (see the test above)")
    other = "b" if won == "a" else "a"
    data = dict(zip("ab", two_sets, strict=True))[other]
    model = (out / "model.onnx").read_bytes()

    line = one_line_error(run(fit(data, out)))
    assert f"run folder '{out}' already holds a finished run" in line
    assert "--overwrite" in line
    assert (out / "model.onnx").read_bytes() == model and classes(out) == CLASSES[won]

    res = run(fit(data, out, "--overwrite"))
    assert res.returncode == 0, res.stderr
    assert classes(out) == CLASSES[other] and (out / "model.onnx").read_bytes() != model
    assert not (out / LOCK_NAME).exists()  # released: a finished run keeps no lock file


def test_folder_held_by_another_process_is_refused_naming_it(two_sets, tmp_path):
    out = tmp_path / "run"
    with RunFolder(out).claim():  # this test process is "the other fit"
        holder = (out / LOCK_NAME).read_text().splitlines()
        assert holder[0] == str(os.getpid())
        line = one_line_error(run(fit(two_sets[0], out)))
    assert f"run folder '{out}' is in use by process {os.getpid()} ({holder[1]})" in line
    assert "pytest" in holder[1]
    assert not (out / "model.onnx").exists() and not (out / "plan.json").exists()


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    """The holder forks a child first (as a DataLoader worker is forked mid-fit): killing
    the holder frees the folder even while that orphan lives on."""
    out = tmp_path / "run"
    code = (
        "import os, sys, time\n"
        "from automl_tl.report.run_folder import RunFolder\n"
        "with RunFolder(sys.argv[1]).claim():\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        time.sleep(600)\n"
        "        os._exit(0)\n"
        "    print(child, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(OutputError, match=f"in use by process {proc.pid} "):
            with RunFolder(out).claim():
                pass
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
        os.kill(child, 0)  # the forked child is still alive
        assert (out / LOCK_NAME).read_text().startswith(f"{proc.pid}\n")  # its note stays...
        with RunFolder(out).claim():  # ...but the lock went with it
            assert (out / LOCK_NAME).read_text().startswith(f"{os.getpid()}\n")
    finally:
        proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _finished(out: Path) -> None:
    (out / "checkpoints" / "pretrained").mkdir(parents=True)
    for name in ("model.onnx", "metrics.json", "plan.json", "report.html"):
        (out / name).write_text(name)
    (out / "notes.txt").write_text("the user's own file")


def test_interrupted_run_is_continued_and_overwrite_clears_only_run_outputs(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    (out / "metrics.json").unlink()  # killed before metrics.json: an interrupted run
    folder = RunFolder(out)
    assert not folder.finished()
    with folder.claim():
        assert (out / "model.onnx").is_file() and (out / "checkpoints").is_dir()

    (out / "metrics.json").write_text("{}")
    assert folder.finished()
    with folder.claim(resume=True):  # --resume continues a finished run in place
        assert (out / "model.onnx").is_file() and (out / "checkpoints").is_dir()
    with folder.claim(overwrite=True) as target:  # the finished run stays until the end
        assert target.path != out and (out / "model.onnx").is_file()
        (target.path / "model.onnx").write_text("the new model")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "notes.txt"]
    assert (out / "model.onnx").read_text() == "the new model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it


def test_api_keeps_a_finished_run_and_releases_the_lock_on_error(two_sets, tmp_path):
    out = tmp_path / "run"
    _finished(out)
    with pytest.raises(OutputError, match="already holds a finished run"):
        AutoTransfer(out=out).fit(two_sets[0])
    assert (out / "model.onnx").read_text() == "model.onnx"
    with pytest.raises(BackboneError):  # fails inside the fit, after the folder was claimed
        AutoTransfer(out=out, backbone="no-such-backbone", overwrite=True).fit(two_sets[0])
    # a failed --overwrite fit leaves the finished run as it was
    assert (out / "model.onnx").read_text() == "model.onnx" and RunFolder(out).finished()
    with RunFolder(out).claim(resume=True):  # the failed fit released its lock
        pass
    assert AutoTransfer(overwrite=True).get_params()["overwrite"] is True


def test_a_failed_overwrite_fit_keeps_the_finished_run(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    line = one_line_error(run(fit(tmp_path / "typo", out, "--overwrite")))
    assert "data path" in line and "does not exist" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left


def test_a_finished_fit_leaves_no_lock_file_and_no_checkpoints(two_sets, tmp_path):
    out = tmp_path / "run"
    res = run(fit(two_sets[0], out))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    optional = [name for name, there in (
        ("label_issues.csv", "label_issues" in metrics),
        ("model.int8.onnx", metrics.get("int8", {}).get("kept", False)),
    ) if there]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "audit.json", "classes.json", "metrics.json", "model.onnx", "plan.json", "report.html",
        *optional,
    ])  # fmt: skip

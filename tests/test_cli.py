"""The command line: clean one-line errors, JSON summaries, predict, progress."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from PIL import Image

from automl_tl.data.demo import write_digits
from tests.helpers import LITE0, assert_one_line_error, run


def test_console_script_installed():
    res = run("--help")
    assert res.returncode == 0 and "fit" in res.stdout and "predict" in res.stdout


def test_missing_path(tmp_path):
    assert_one_line_error(run("fit", tmp_path / "nope"), "nope", "does not exist")


def test_empty_folder(tmp_path):
    assert_one_line_error(run("fit", tmp_path), str(tmp_path), "no class folders")


def test_one_usable_class(tmp_path):
    write_digits(tmp_path, per_class=3, digits=(4,))
    (tmp_path / "empty_class").mkdir()
    res = run("fit", tmp_path, "--out", tmp_path / "run")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "error: need at least 2 classes" in res.stderr
    assert "LEFT OUT" in res.stderr  # the empty class is warned about first


def test_unwritable_output_folder(tmp_path):
    write_digits(tmp_path / "data", per_class=3, digits=(1, 2))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = run("fit", tmp_path / "data", "--out", blocker / "run")
    assert_one_line_error(res, "not writable", "--out")


def test_strict_turns_problems_into_errors(tmp_path):
    write_digits(tmp_path, per_class=3, digits=(1, 2))
    (tmp_path / "1" / "broken.png").write_bytes(b"\x89PNG garbage")
    assert_one_line_error(
        run("fit", tmp_path, "--strict", "-q", "--out", tmp_path / "r"), "broken.png"
    )


@pytest.mark.parametrize(
    "args,flag,allowed",
    [
        (["--case", "7"], "--case", "a whole number at least 1 and at most 4"),
        (["--time-budget", "-5"], "--time-budget", "a number above 0"),
        (["--epochs", "0"], "--epochs", "a whole number at least 1"),
        (["--size-ratio", "-1"], "--size-ratio", "a number above 0"),
        (["--finetune-epochs", "-2"], "--finetune-epochs", "a whole number at least 1"),
        (["--val-fraction", "1"], "--val-fraction", "a number above 0 and below 1"),
        (["--seed", "-1"], "--seed", "a whole number at least 0"),
        (["--similarity-pvalue", "0"], "--similarity-pvalue", "above 0 and at most 1"),
        (["--batch-size", "0"], "--batch-size", "a whole number at least 1"),
        (["--input-size", "100"], "--input-size", "auto, backbone or a multiple of 32"),
        (["--finetune", "some"], "--finetune", "'auto', 'partial', 'full'"),
        (["--backbone", "nonet"], "--backbone", "use one of auto, convnext_tiny"),
        (["--strategy", "nostrategy"], "--strategy", "linear_head"),
    ],
)
def test_bad_values_are_refused_before_any_work(tmp_path, args, flag, allowed):
    write_digits(tmp_path / "d", per_class=3, digits=(1, 2))
    res = run("fit", tmp_path / "d", *args, "--out", tmp_path / "r", "--cache-dir", tmp_path / "c")
    assert_one_line_error(res, f"'{flag}'", allowed)
    assert res.returncode == 2
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()  # nothing written


def test_predict_refuses_top_k_zero(tmp_path):
    res = run("predict", tmp_path / "m.onnx", tmp_path, "-k", "0")
    assert_one_line_error(res, "'--top-k' / '-k'", "a whole number at least 1")


def test_resume_and_overwrite_together_are_refused(tmp_path):
    write_digits(tmp_path / "d", per_class=3, digits=(1, 2))
    res = run("fit", tmp_path / "d", "--resume", "--overwrite", "--out", tmp_path / "r")
    assert_one_line_error(res, "resume and overwrite exclude each other")
    assert not (tmp_path / "r").exists()


def test_verbose_shows_the_traceback(tmp_path):
    res = run("fit", tmp_path / "nope", "--verbose")
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: data path")


def test_a_fit_that_fails_before_it_starts_leaves_no_run_folder(tmp_path):
    res = run("fit", tmp_path / "nope", cwd=tmp_path)
    assert_one_line_error(res, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even runs/


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    data = write_digits(tmp_path_factory.mktemp("d"), per_class=10, digits=(0, 1))
    Image.new("RGB", (5, 5)).save(data / "0" / "tiny.png")
    (data / "1" / "notes.jpg").write_text("not an image")
    out = tmp_path_factory.mktemp("out") / "run"
    res = run("fit", data, "--out", out, "--epochs", "20", "--json")
    return data, out, res


def test_fit_json_summary(cli_run):
    data, out, res = cli_run
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["run_dir"] == str(out) and Path(summary["model"]).is_file()
    # small data; the last stage pooled is within one standard error of the best view: case 1
    assert summary["classes"] == ["0", "1"] and summary["case"] == 1
    assert summary["images_used"] == 21 and summary["files_skipped"] == 1
    # the default backbone search tried the three installed Lite backbones, cheapest first
    tried = [t["backbone"] for t in summary["backbones"]][:3]  # then the side-by-side head
    assert tried == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert summary["backbone"] == next(
        t["backbone"] for t in summary["backbones"] if t["status"] == "chosen"
    )
    assert summary["export_check"]["passed"] is True
    assert "notes.jpg" in res.stderr  # per-file problem listed, run continued
    # --json makes stdout JSON and nothing more: progress still goes to stderr
    assert "candidates" in res.stderr and "export check" not in res.stderr


def test_fit_shows_progress_unless_quiet(tmp_path):
    data = write_digits(tmp_path / "d", per_class=4, digits=(0, 1))
    cold = ("--cache-dir", tmp_path / "cache")  # so the backbone really runs
    loud = run("fit", data, "--out", tmp_path / "a", "--epochs", "3", *cold)
    assert loud.returncode == 0 and "img/s" in loud.stderr
    # the chosen head is one of the candidates' fits (not fitted again): no "train" bar
    for step in ("audit", "embed", "bn-drift", "candidates", "head/s"):
        assert step in loud.stderr
    assert "validation accuracy" in loud.stdout
    assert "backbones: efficientnet_lite0 " in loud.stdout  # what the search measured
    quiet = run("fit", data, "--out", tmp_path / "b", "--epochs", "3", "--quiet", *LITE0)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_predict_json_top_k(cli_run):
    data, out, _ = cli_run
    res = run(
        "predict", out / "model.onnx", data / "0", data / "1" / "0000.png", "-k", "2", "--json"
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 12 and all(len(r["top"]) == 2 for r in rows)
    assert rows[-1]["path"].endswith("0000.png")
    plain = run("predict", out / "model.onnx", data / "1" / "0000.png")
    assert plain.returncode == 0 and plain.stdout.split("\t")[1].split()[0] == "1"


def test_predict_errors(cli_run, tmp_path):
    _, out, _ = cli_run
    assert_one_line_error(run("predict", tmp_path / "none.onnx", tmp_path), "not found")
    assert_one_line_error(run("predict", out / "model.onnx", tmp_path / "x.png"), "does not exist")


def test_fit_with_a_torchvision_backbone_from_a_local_weight_file(tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # a user's local file
    data = write_digits(tmp_path / "d", per_class=6, digits=(0, 1))
    res = run("fit", data, "--backbone", "resnet18", "--weights", weights, "--case", "1",
              "--out", tmp_path / "r", "--json", "-q")  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["backbone"] == "resnet18" and summary["export_check"]["passed"]
    meta = {p.key: p.value for p in onnx.load(summary["model"]).metadata_props}
    prov = json.loads(meta["automl_tl.provenance"])
    assert prov["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_missing_torchvision_weights_offline_is_one_line(tmp_path, monkeypatch):
    data = write_digits(tmp_path / "d", per_class=3, digits=(0, 1))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    res = run("fit", data, "--backbone", "resnet18", "--out", tmp_path / "r", "-q")
    assert_one_line_error(res, "no weights for resnet18", "--weights")


def test_doctor_reports_the_installation(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from automl_tl.cli import main
    from automl_tl.features import ops

    monkeypatch.setenv("AUTOML_TL_CACHE_DIR", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["compiled_ops"]["backend"] == ops.backend()
    assert "CPUExecutionProvider" in info["onnxruntime"]["available_providers"]
    assert info["cache"]["location"] == str(tmp_path / "cache")
    assert info["versions"]["torch"] and info["plugins"]["backbones"] >= 1
    text = CliRunner().invoke(main, ["doctor"]).output
    for key in ("compiled ops:", "onnxruntime providers:", "CUDA:", "faiss", "cache:"):
        assert key in text


@pytest.mark.parametrize(
    "where,extra,said",
    [
        (
            "automl_tl.features.cache.FeatureCache._put",
            [],
            "interrupted during embed: the features computed so far are in the feature cache; "
            "the same command continues from there",
        ),
        (
            "automl_tl.train.tune_full_run.FullRun.train_epoch",
            ["--case", "3", "--finetune", "full", "--finetune-epochs", "1"],
            "interrupted during fine-tune: the last finished epoch is checkpointed; repeat the "
            "command with the same --out and add --resume to continue from it",
        ),
    ],
    ids=["embedding", "fine-tuning"],
)
def test_ctrl_c_says_what_it_interrupted(tmp_path, monkeypatch, where, extra, said):
    """Ctrl-C (KeyboardInterrupt, raised where the signal would land) during embedding or
    fine-tuning: one line naming what was interrupted and how to continue, exit status 130.
    Raised in-process at a fixed point, so no race with how fast this machine embeds."""
    from click.testing import CliRunner

    from automl_tl.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupted)
    data = write_digits(tmp_path / "d", per_class=6, digits=(0, 1))
    args = ["fit", str(data), "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]
    res = CliRunner().invoke(main, [*args, "-q", *extra])
    assert res.exit_code == 130
    assert res.stderr.strip().splitlines()[-1] == said and "Traceback" not in res.stderr

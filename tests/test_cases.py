"""The four cases end to end on small real subsets (forced with case=N, short budgets), the
decision log in plan.json / metrics.json, and resuming a killed fine-tuning run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from automl_tl import AutoTransfer
from automl_tl.data.batches import iter_batches
from automl_tl.export.check import check_parity
from automl_tl.features.views import frozen_views
from automl_tl.train.tune_full import CHECKPOINT_NAME, load_checkpoint
from tests.helpers import CLI, LITE0, image_files, make_subset, shared_dataset


def unused_images(src: Path, classes, skip: int, n: int) -> list[Path]:
    """Images of src/train/<class> that no subset above uses (from index `skip` on)."""
    return [f for c in classes for f in image_files(src / "train" / c)[skip : skip + n]]


def read_json(path: Path):
    return json.loads(path.read_text())


def parity_on(model: AutoTransfer, paths: list[Path]) -> dict:
    batch = next(iter_batches(paths, model.spec_.preprocessing, len(paths)))
    return check_parity(model.model_, model.onnx_path_, batch)


def onnx_ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# ------------------------------------------------------------------ cases 1 and 2 (frozen)
@pytest.fixture(scope="module")
def case1(tmp_path_factory):
    src = shared_dataset("hymenoptera_data")
    data = make_subset(src, tmp_path_factory.mktemp("hy"), ["ants", "bees"], 12, 6)
    out = tmp_path_factory.mktemp("case1")
    model = AutoTransfer(case=1, max_analysis_images=24, epochs=60, out=out, quiet=True)
    return src, model.fit(data)


@pytest.fixture(scope="module")
def case2(tmp_path_factory):
    src = shared_dataset("mnist")
    data = make_subset(src, tmp_path_factory.mktemp("mn"), ["0", "1", "7"], 12, 6)
    out = tmp_path_factory.mktemp("case2")
    lite0 = "efficientnet_lite0"  # the cut, not the backbone search
    model = AutoTransfer(
        case=2, backbone=lite0, max_analysis_images=30, epochs=60, out=out, quiet=True
    )
    return src, model.fit(data)


def test_case1_freezes_the_whole_backbone(case1):
    src, model = case1
    plan = read_json(model.run_dir_ / "plan.json")
    assert model.plan_.case == plan["case"] == 1 and plan["strategy"] == "linear_head"
    assert plan["cut"] == "head"
    assert "case 1 requested by the user (--case)" in "\n".join(plan["reasons"])
    assert model.export_check_["passed"] and model.export_check_["n_images"] == 12
    check = parity_on(model, unused_images(src, ["ants", "bees"], 30, 4))
    assert check["passed"] and check["n_images"] == 8
    assert model.metrics_["validation"]["accuracy"] >= 0.75  # ants vs bees, frozen ImageNet


def test_case2_cuts_the_backbone_at_the_planned_stage(case1, case2):
    src, model = case2
    spec = model.spec_
    plan = read_json(model.run_dir_ / "plan.json")
    assert model.plan_.case == plan["case"] == 2 and plan["strategy"] == "cut_head"
    cut = plan["cut"]
    assert cut == model.plan_.cut and cut != spec.stages[-1].name
    grid, view = plan["grid"], plan["view"]
    assert f"frozen head: '{view}'" in "\n".join(plan["reasons"])
    # --case 2: every view but the last stage pooled was measured, then the leaders of three
    # stages joined; the best one kept
    tried = {c["view"]: c for c in plan["candidates"]}
    singles = [v.name for v in frozen_views(spec) if v.name != spec.stages[-1].name]
    joined = plan["candidates"][-1]
    assert list(tried) == singles + [joined["view"]] and joined["grid"] == 0
    members = joined["view"].split("+")
    assert len(members) == 3 and len({m.split("@")[0] for m in members}) == 3
    best = max(tried.values(), key=lambda c: (c["val_acc"], -c["val_loss"]))
    assert tried[view] == best
    assert model.model_.extractor.cut == spec.stage_index(cut)
    assert model.model_.extractor.grid == grid
    if grid:  # one stage pooled to a grid
        assert view == (cut if grid == 1 else f"{cut}@{grid}x{grid}") and not plan["parts"]
        width = spec.stages[spec.stage_index(cut)].width * grid * grid
    else:  # a joined view: its members side by side, the deepest is the cut
        assert view == joined["view"] and cut == plan["parts"][-1][0]
        assert model.model_.extractor.parts == tuple(
            (spec.stage_index(n), g) for n, g in plan["parts"]
        )
        width = sum(tried[m]["width"] for m in members)
    assert model.model_.head.fc.in_features == width == tried[view]["width"]
    proto = onnx.load(str(model.onnx_path_))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["automl_tl.provenance"])["cut"] == cut
    # the exported graph really is truncated: fewer convolutions than the full backbone
    ops_full, ops_cut = onnx_ops(case1[1].onnx_path_), onnx_ops(model.onnx_path_)
    assert ops_cut.count("Conv") < ops_full.count("Conv")
    assert model.export_check_["passed"]
    check = parity_on(model, unused_images(src, ["0", "1", "7"], 100, 3))
    assert check["passed"] and check["n_images"] == 9
    band = plan["expected_accuracy"]
    acc = tried[view]["val_acc"]
    assert band["probe_accuracy"] == acc and band["low"] <= acc <= band["high"]


# ------------------------------------------------------------ cases 3 and 4 (fine-tuning)
@pytest.fixture(scope="module")
def hy_small(tmp_path_factory):
    src = shared_dataset("hymenoptera_data")
    return make_subset(src, tmp_path_factory.mktemp("hyft"), ["ants", "bees"], 6, 3)


@pytest.fixture(scope="module")
def mn_small(tmp_path_factory):
    src = shared_dataset("mnist")
    return make_subset(src, tmp_path_factory.mktemp("mnft"), ["3", "8"], 6, 3)


def _finetuned(case: int, data: Path, out: Path, **kw) -> AutoTransfer:
    """Full fine-tuning named explicitly (no trial epoch, whatever the estimates say)."""
    model = AutoTransfer(
        case=case,
        finetune_epochs=1,
        finetune="full",
        max_analysis_images=16,
        out=out,
        backbone="efficientnet_lite0",
        **kw,
    )
    return model.fit(data)


def _kept_per_notes(metrics: dict, outcome: str) -> None:
    """The notes say which model was kept, and it is the plan's outcome."""
    notes = "\n".join(metrics["notes"])
    if outcome == "full":
        assert "fine-tuned the whole network from the frozen head" in notes
        assert metrics["best_epoch"] >= 1
    else:
        assert outcome == "frozen" and "kept the warm start (the frozen head)" in notes
        assert metrics["best_epoch"] == 0


@pytest.fixture(scope="module")
def case3(hy_small, tmp_path_factory):
    return _finetuned(3, hy_small, tmp_path_factory.mktemp("case3"))


@pytest.mark.slow
def test_case3_finetunes_from_pretrained_weights(case3):
    model = case3
    plan = read_json(model.run_dir_ / "plan.json")
    metrics = read_json(model.run_dir_ / "metrics.json")
    assert plan["case"] == 3 and plan["strategy"] == "finetune"
    # warm start: the frozen choice's view, its head and its validation accuracy
    assert plan["warm_start"]["view"] == plan["view"]
    # the cut is the stage the view reads (a joined view: its deepest member, named last)
    assert plan["cut"] == plan["view"].split("+")[-1].split("@")[0]
    assert model.model_.extractor.grid == plan["grid"]
    # the checkpoints went when the run finished: nothing will resume them
    assert not (model.run_dir_ / "checkpoints").exists()
    assert metrics["epochs_run"] == 1 and [h["epoch"] for h in metrics["history"]] == [1]
    _kept_per_notes(metrics, plan["outcome"])
    assert metrics["validation"]["accuracy"] >= plan["warm_start"]["val_acc"]
    assert metrics["export_check"]["passed"] and model.export_check_["passed"]
    assert (model.run_dir_ / "model.onnx").is_file()


@pytest.mark.slow
def test_plan_and_metrics_keep_the_decision_log(case3):
    run = case3.run_dir_
    plan, metrics = read_json(run / "plan.json"), read_json(run / "metrics.json")
    band = plan["expected_accuracy"]
    assert {"low", "high", "probe_accuracy", "basis"} <= set(band)
    assert band["low"] <= band["probe_accuracy"] <= band["high"] == 1.0  # fine-tuning case
    assert plan["reasons"] and plan["case_description"].startswith("large + similar")
    got = metrics["expected_accuracy"]
    assert got["achieved"] == metrics["validation"]["accuracy"]
    assert got["within"] == (band["low"] <= got["achieved"] <= band["high"])
    assert {k: got[k] for k in band} == band


@pytest.mark.slow
def test_case4_skips_from_scratch_when_the_pretrained_features_carry_over(mn_small, tmp_path):
    """3 vs 8 on 6 digits each: the last stage, pooled, validates perfectly, so the evidence
    for training from random weights (a frozen choice peaking early) is absent."""
    model = _finetuned(4, mn_small, tmp_path / "run", time_budget=1e7)  # time never binds
    metrics = read_json(model.run_dir_ / "metrics.json")
    assert model.plan_.case == 4 and model.plan_.strategy == "finetune_or_scratch"
    assert model.plan_.warm_start["view"] == "head"
    assert metrics["notes"][-1] == (
        "from-scratch run skipped: the frozen choice peaked at 'head' (stride 32 > 8): the "
        "pretrained features carry over"
    )
    assert not (model.run_dir_ / "checkpoints" / "scratch").exists()
    assert metrics["export_check"]["passed"]


@pytest.mark.slow
def test_case4_with_tiny_budget_skips_the_scratch_run(mn_small, tmp_path):
    """A budget the analysis has spent already, on any machine: the named full fine-tuning
    runs its first epoch and stops, and the from-scratch run does not start."""
    model = _finetuned(4, mn_small, tmp_path / "run", time_budget=1e-3)
    metrics = read_json(model.run_dir_ / "metrics.json")
    assert model.plan_.case == 4  # a forced case is never demoted
    assert [h["epoch"] for h in metrics["history"]] == [1]  # the pretrained run, no scratch
    assert not (model.run_dir_ / "checkpoints").exists()
    notes = "\n".join(metrics["notes"])
    assert "from-scratch run skipped" in notes and "exceeds the 0s left" in notes
    assert "one more" in notes and "would pass the time budget" in notes
    assert metrics["export_check"]["passed"]


# ------------------------------------------------------------------------ resume after kill
@pytest.mark.slow
def test_killed_finetuning_resumes_from_its_checkpoint(hy_small, tmp_path):
    run_dir = tmp_path / "run"
    ck = run_dir / "checkpoints" / "pretrained" / CHECKPOINT_NAME
    args = [CLI, "fit", str(hy_small), "--case", "3", "--finetune-epochs", "3", *LITE0]
    args += ["--finetune", "full", "--time-budget", "36000"]
    args += ["--out", str(run_dir)]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900
        while not ck.exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint after 900 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    saved = load_checkpoint(ck)
    done = saved["epoch"]
    assert 1 <= done < 3 and not (run_dir / "metrics.json").exists()

    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    assert f"resuming fine-tuning after epoch {done}" in res.stderr
    metrics = read_json(run_dir / "metrics.json")
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and metrics["epochs_run"] == 3
    # the epochs run before the kill are carried over as recorded (timings included)
    assert history[:done] == json.loads(json.dumps(saved["history"]))
    assert not ck.exists()  # the finished run removed its checkpoints
    assert metrics["export_check"]["passed"] and (run_dir / "model.onnx").is_file()
    assert np.isfinite([h["val_loss"] for h in history]).all()

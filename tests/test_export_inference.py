"""The exported ONNX model: one graph, metadata, dynamic batch, parity, torch-free inference."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from automl_tl.core.errors import AutoTLError, ExportError
from automl_tl.data.files import expand_paths
from automl_tl.data.preprocess import batch_to_float, load_for_model
from automl_tl.export.check import check_parity
from automl_tl.export.predictor import Predictor


def _meta(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_run_folder_contents(fitted):
    for name in ("model.onnx", "metrics.json", "plan.json", "classes.json", "audit.json"):
        assert (fitted.run_dir_ / name).is_file(), name
    plan = json.loads((fitted.run_dir_ / "plan.json").read_text())
    assert plan["backbone"] == "efficientnet_lite0" and plan["reasons"]
    # small data: a frozen head, on the view measured best (case 1 = the last stage pooled):
    # 23 single views of EfficientNet-Lite0, then the leaders of three stages joined
    assert plan["profile"]["size"] == "small" and len(plan["candidates"]) == 23 + 1
    assert plan["candidates"][-1]["view"].count("+") == 2
    assert plan["case"] == (1 if plan["view"] == "head" else 2)
    ruled = {"similar": 1, "different": 2}[plan["profile"]["similar"]]
    overridden = f"overrides the size/similarity rule: case {ruled} -> case {plan['case']}"
    assert (overridden in "\n".join(plan["reasons"])) == (plan["case"] != ruled)
    assert json.loads((fitted.run_dir_ / "classes.json").read_text()) == ["0", "1", "7"]
    metrics = json.loads((fitted.run_dir_ / "metrics.json").read_text())
    val = metrics["validation"]
    assert set(val) >= {"accuracy", "balanced_accuracy", "per_class", "confusion_matrix"}
    assert metrics["export_check"]["passed"] is True


def test_metadata_carries_classes_preprocessing_provenance(fitted):
    meta = _meta(fitted.onnx_path_)
    assert json.loads(meta["automl_tl.classes"]) == fitted.classes_
    prep = json.loads(meta["automl_tl.preprocessing"])
    assert prep == {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear"}
    # normalisation is inside the graph: the metadata says so instead of listing it as a step
    does = json.loads(meta["automl_tl.graph_does"])
    assert does["normalisation"]["mean"] == [0.5, 0.5, 0.5] and "mean" not in prep
    prov = json.loads(meta["automl_tl.provenance"])
    assert prov["backbone"] == "efficientnet_lite0" and len(prov["weights_sha256"]) == 64
    # content only, so that an equal model is the same file; the time is in metrics.json
    assert "created" not in prov
    assert fitted.metrics_["created"].endswith("Z") and len(fitted.metrics_["created"]) == 20


def test_one_graph_dynamic_batch_and_parity(fitted, digits_dir):
    files = sorted(digits_dir.rglob("*.png"))[:5]
    batch = batch_to_float([load_for_model(f, fitted.spec_.preprocessing) for f in files])
    sess = ort.InferenceSession(str(fitted.onnx_path_), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    one = sess.run(None, {"image": batch[:1]})[0]
    five = sess.run(None, {"image": batch})[0]
    assert one.shape == (1, 3) and five.shape == (5, 3)
    np.testing.assert_allclose(one[0], five[0], atol=1e-4)
    with torch.inference_mode():
        expected = fitted.model_(torch.from_numpy(batch)).numpy()
    assert np.abs(five - expected).max() <= 1e-4
    assert check_parity(fitted.model_, fitted.onnx_path_, batch)["passed"]


def test_parity_check_fails_when_the_model_differs(fitted, digits_dir, tmp_path):
    import copy

    other = copy.deepcopy(fitted.model_)
    with torch.no_grad():
        other.head.fc.bias += 1.0  # a different model than the one exported
    files = sorted(digits_dir.rglob("*.png"))[:3]
    batch = batch_to_float([load_for_model(f, fitted.spec_.preprocessing) for f in files])
    with pytest.raises(ExportError, match="disagrees with torch"):
        check_parity(other, fitted.onnx_path_, batch)


def test_predictor_matches_torch_predictions(fitted, digits_dir):
    results = Predictor(fitted.onnx_path_).predict([digits_dir], top_k=2)
    files = expand_paths([digits_dir])
    assert [r["path"] for r in results] == [str(f) for f in files]
    assert all(len(r["top"]) == 2 for r in results)
    assert [r["top"][0][0] for r in results] == fitted.predict(files)


def test_predictor_reports_unreadable_files_and_bad_models(fitted, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    (res,) = Predictor(fitted.onnx_path_).predict([bad])
    assert "error" in res and "top" not in res
    with pytest.raises(AutoTLError, match="not found"):
        Predictor(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00junk")
    with pytest.raises(AutoTLError, match="not a loadable ONNX model"):
        Predictor(junk)


def test_inference_runs_where_torch_cannot_be_imported(fitted, digits_dir):
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch still importable")
        from automl_tl.export.predictor import Predictor
        res = Predictor({str(fitted.onnx_path_)!r}).predict([{str(digits_dir)!r}])
        assert all("top" in r for r in res), res
        heavy = ("torch", "torchvision", "sklearn")
        bad = [m for m, mod in sys.modules.items() if mod and m.split(".")[0] in heavy]
        assert not bad, bad
        print(len(res))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == len(expand_paths([digits_dir]))


def test_a_model_fine_tuned_at_a_smaller_input_is_evaluated_and_exported_at_it(
    tmp_path, monkeypatch
):
    """24x24 digits: full fine-tuning runs at 96x96 (4 x 24, a multiple of 32), the frozen
    choice at 224. The keep decision is forced here (it is tested on its own in test_lpft)
    so that the fine-tuned model is the one kept: the plan, the ONNX graph's input, its
    metadata and the Predictor (onnxruntime alone) all follow it."""
    import automl_tl.train.tune as lpft
    from automl_tl.data.demo import write_digits
    from automl_tl.estimator import AutoTransfer

    monkeypatch.setattr(lpft, "_accept", lambda *a: True)
    data = write_digits(tmp_path / "digits24", per_class=12, digits=(0, 1, 7), size=24)
    model = AutoTransfer(
        case=3,
        finetune="full",
        finetune_epochs=1,
        out=tmp_path / "run",
        max_analysis_images=24,
        backbone="efficientnet_lite0",
    ).fit(data)
    plan = json.loads((model.run_dir_ / "plan.json").read_text())
    full = next(e for e in plan["estimates"] if e["kind"] == "full")
    # the warm start is refitted at 96 px: all 36 train + validation images embedded there
    assert full["input_size"] == 96 and full["setup_images"] == 36
    reason = next(r for r in plan["reasons"] if r.startswith("fine-tuning input size"))
    assert reason.startswith("fine-tuning input size: 96x96, not the backbone's 224x224")
    assert "median shorter side is 24 px" in reason
    assert plan["outcome"] == "full" and plan["input_size"] == 96
    graph = onnx.load(str(model.onnx_path_)).graph.input[0]
    assert [d.dim_value for d in graph.type.tensor_type.shape.dim[1:]] == [3, 96, 96]
    assert json.loads(_meta(model.onnx_path_)["automl_tl.preprocessing"])["crop_size"] == 96
    assert model.metrics_["export_check"]["passed"] is True
    files = sorted(data.rglob("*.png"))
    onnx_top1 = [r["top"][0][0] for r in Predictor(model.onnx_path_).predict(files)]
    assert onnx_top1 == model.predict(files)

"""The int8 variant of an exported model (export.quantize): a real exported model, real images,
real onnxruntime quantisation. The keep rule's thresholds are passed in, so whether a file is
written never depends on how fast this machine is."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from automl_tl.core.console import Console
from automl_tl.core.files import file_sha256
from automl_tl.data.preprocess import batch_to_float, load_for_model
from automl_tl.export.onnx import export_onnx
from automl_tl.export.quantize import RECORD_KEY, cpu_int8_flags, int8_variant

from .helpers import TINY_PREP, tiny_model

KEYS = {
    "kept",
    "reason",
    "fp32_images_per_second",
    "int8_images_per_second",
    "speedup",
    "fp32_accuracy",
    "int8_accuracy",
    "n_val",
    "batch_size",
    "vnni",
    "seconds",
    "path",
}
ALWAYS, NEVER = {"min_speedup": 0.0, "max_drop": 1.0}, {"min_speedup": float("inf")}


@pytest.fixture(scope="module")
def images(digits_dir):
    """Real digit images at the tiny model's 32 px: (calibration, validation, labels)."""
    classes = sorted(p.name for p in digits_dir.iterdir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((digits_dir / c).glob("*.png"))]
    x = batch_to_float([load_for_model(f, TINY_PREP) for f, _ in files])
    y = np.array([label for _, label in files])
    return x[0::2], x[1::2], y[1::2]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fp32")
    meta = {"classes": ["0", "1", "7"], "preprocessing": TINY_PREP.to_dict()}
    return export_onnx(tiny_model(3), folder / "model.onnx", TINY_PREP.crop_size, meta)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The temporary folder the step (and onnxruntime's quantiser) uses, to check it is left
    empty."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _quantised_inputs(proto) -> dict[str, bool]:
    """Node name -> whether any of its inputs comes from a DequantizeLinear (QDQ: quantised)."""
    dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: any(i in dq for i in n.input) for n in proto.graph.node}


def test_kept_int8_model_carries_the_metadata_and_the_record(model, images, tmp_path, private_tmp):
    calibration, val, labels = images
    out = tmp_path / "run" / "model.int8.onnx"
    out.parent.mkdir()
    stream = io.StringIO()
    record = int8_variant(
        model, calibration, val, labels, out, console=Console(stream=stream), repeats=3, **ALWAYS
    )
    assert KEYS <= set(record) and json.loads(json.dumps(record)) == record
    assert record["kept"] and record["path"] == str(out) and out.is_file(), record
    assert record["reason"].startswith("int8 kept: ")
    assert record["n_val"] == len(val) and record["batch_size"] == 24 and record["timings"] >= 3
    assert record["vnni"] == any("vnni" in f for f in cpu_int8_flags())
    assert 0 <= record["int8_accuracy"] <= 1 and record["speedup"] > 0
    assert "int8 kept" in stream.getvalue()
    # the fp32 model's metadata, plus the record of how the copy was made
    fp32, int8 = onnx.load(str(model)), onnx.load(str(out))
    meta = {p.key: p.value for p in int8.metadata_props}
    assert {p.key: p.value for p in fp32.metadata_props}.items() <= meta.items()
    embedded = json.loads(meta[RECORD_KEY])
    assert embedded["source_sha256"] == file_sha256(model)
    assert embedded["int8_accuracy"] == record["int8_accuracy"]
    # really int8: the convolutions read dequantised int8 weights, the head stays float
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    quantised = _quantised_inputs(int8)
    convs = [n.name for n in int8.graph.node if n.op_type == "Conv"]
    assert convs and all(quantised[c] for c in convs)
    assert not any(quantised[n.name] for n in int8.graph.node if n.op_type == "Gemm")
    # it runs, and gives the accuracy the record says
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": val})[0]
    assert np.mean(logits.argmax(1) == labels) == pytest.approx(record["int8_accuracy"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.int8.onnx"]
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("rule", "words"),
    [(NEVER, "(too slow)"), ({"min_speedup": 0.0, "max_drop": -1.0}, "(accuracy lost)")],
)
def test_rejected_int8_model_leaves_no_file(model, images, tmp_path, private_tmp, rule, words):
    calibration, val, labels = images
    out = tmp_path / "model.int8.onnx"
    record = int8_variant(model, calibration, val, labels, out, repeats=2, **rule)
    assert not record["kept"] and record["path"] is None and not out.exists()
    assert record["reason"].startswith(f"int8 not kept {words}: "), record["reason"]
    assert record["speedup"] > 0 and record["fp32_accuracy"] is not None
    assert list(tmp_path.iterdir()) == [private_tmp] and list(private_tmp.iterdir()) == []


def test_an_int8_file_of_an_earlier_model_is_removed_when_this_one_is_not_kept(
    model, images, tmp_path
):
    calibration, val, labels = images
    out = tmp_path / "model.int8.onnx"
    out.write_bytes(b"an earlier model")
    assert not int8_variant(model, calibration, val, labels, out, repeats=1, **NEVER)["kept"]
    assert not out.exists()


def test_a_quantisation_failure_is_a_record_not_an_error(model, images, tmp_path, private_tmp):
    """Calibration images the graph cannot take (4 channels): onnxruntime fails inside
    quantize_static; the fit goes on with a one-line reason and nothing written."""
    calibration, val, labels = images
    wrong = np.concatenate([calibration, calibration[:, :1]], axis=1)
    out = tmp_path / "model.int8.onnx"
    record = int8_variant(model, wrong, val, labels, out, **ALWAYS)
    assert not record["kept"] and record["path"] is None and not out.exists()
    assert record["reason"].startswith("int8 not kept: quantisation failed (")
    assert "\n" not in record["reason"] and record["speedup"] is None
    assert record["seconds"] >= 0 and json.dumps(record)
    assert list(tmp_path.iterdir()) == [private_tmp] and list(private_tmp.iterdir()) == []
    # not even an ONNX file
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    record = int8_variant(junk, calibration, val, labels, out, **ALWAYS)
    assert not record["kept"] and "quantisation failed" in record["reason"]


class _Tail(nn.Module):
    """Like the model's `outputs` submodule: calibrated logits, and a score from a MatMul
    against a reference matrix, a TopK and a comparison."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("reference", torch.randn(width, 8, generator=torch.Generator()))
        self.register_buffer("held_out", torch.linspace(-1, 1, 5))

    def forward(self, logits, features):
        sims = features @ self.reference
        score = torch.topk(sims, 3, dim=1).values.mean(dim=1)
        below = (self.held_out.unsqueeze(0) <= score.unsqueeze(1)).float().sum(dim=1)
        return logits / 1.5, torch.softmax(logits / 1.5, 1), score, below


class _WithTail(nn.Module):
    def __init__(self):
        super().__init__()
        inner = tiny_model(3)
        self.extractor, self.head, self.outputs = inner.extractor, inner.head, _Tail(16)

    def forward(self, x):
        features = self.extractor(x)
        return self.outputs(self.head(features), features)


def test_the_outputs_tail_and_the_head_stay_float(images, tmp_path):
    calibration, val, labels = images
    path = tmp_path / "model.onnx"
    names = ["logits", "probabilities", "ood_score", "ood_pvalue"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation, as export.onnx
        torch.onnx.export(
            _WithTail().eval(),
            (torch.rand(2, 3, 32, 32),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=names,
            dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )
    tail = [n.name for n in onnx.load(str(path)).graph.node if "outputs/" in n.name]
    assert any(n.endswith("MatMul") for n in tail) and any(n.endswith("TopK") for n in tail)
    out = tmp_path / "model.int8.onnx"
    record = int8_variant(path, calibration, val, labels, out, repeats=1, **ALWAYS)
    assert record["kept"] and record["output"] == "logits", record
    assert record["ood_score_max_abs_diff"] >= 0 and record["ood_pvalue_max_abs_diff"] >= 0
    int8 = onnx.load(str(out))
    quantised = _quantised_inputs(int8)
    assert any(quantised.values())
    float_side = [n for n in int8.graph.node if "outputs/" in n.name or "head/" in n.name]
    assert float_side and not any(quantised[n.name] for n in float_side)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names


def test_quantising_imports_no_torch(model, images, tmp_path):
    """Neither the import nor the step itself (onnxruntime's quant_pre_process would)."""
    np.savez(tmp_path / "x.npz", *images)
    code = (
        "import sys, numpy as np, automl_tl.export.quantize as q\n"
        f"x = np.load({str(tmp_path / 'x.npz')!r})\n"
        f"r = q.int8_variant({str(model)!r}, x['arr_0'], x['arr_1'], x['arr_2'], "
        f"{str(tmp_path / 'm.onnx')!r}, repeats=1)\n"
        "print(r['speedup'] is not None, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["True", "False"], done.stderr

"""The feature-cache ops (automl_tl.features.ops) against their pure-torch reference.

The public functions are tested whatever backend is active; with the compiled extension built
(`make`) that is the C++ kernels, and `test_compiled_backend_is_active` says so.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

from automl_tl.features import ops


def _compiled_ops():
    """torch.ops.automl_tl once automl_tl._C is imported, or skip with the reason."""
    try:
        importlib.import_module("automl_tl._C")
    except Exception as exc:  # not built, or failed to load
        pytest.skip(f"automl_tl._C is not importable ({exc}); build it with `make`")
    return torch.ops.automl_tl


def _rows(n: int, d: int, seed: int) -> torch.Tensor:
    """Random rows with magnitudes from 1e-3 to 1e3, negatives, and an all-zero row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.logspace(-3, 3, n)[:, None]
    if n > 2:
        x[n // 2] = 0.0
    return x


SHAPES = [(1, 1), (5, 7), (3, 33), (64, 100), (200, 257), (40, 1280)]


# ------------------------------------------------------------------ quantize
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_fp16_equals_reference(shape):
    x = _rows(*shape, seed=1)
    assert torch.equal(ops.quantize_fp16(x), ops.ref_quantize_fp16(x))


def test_quantize_fp16_rounding_edges():
    # halfway cases (round to even), subnormals, overflow to inf, signed zero
    one_ulp = 2.0**-10
    vals = [1 + one_ulp / 2, 1 + 3 * one_ulp / 2, -(1 + one_ulp / 2), 6e-8, 1e-5, 7e4, -7e4]
    x = torch.tensor([vals + [0.0, -0.0, 65504.0, 65520.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    out = ops.quantize_fp16(x)
    assert torch.equal(out, x.to(torch.float16))
    assert out[0, 0].item() == 1.0 and out[0, 1].item() == 1 + 2 * one_ulp


@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_int8_equals_reference(shape):
    x = _rows(*shape, seed=2)
    q, s = ops.quantize_int8(x)
    rq, rs = ops.ref_quantize_int8(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (shape[0],)
    # The acceptance bar is one quantisation step; the kernels are in fact exact.
    assert (q.int() - rq.int()).abs().max() <= 1
    assert torch.equal(q, rq) and torch.equal(s, rs)


def test_quantize_int8_zero_rows_halves_and_clamp():
    x = torch.zeros(4, 40)
    x[1, :5] = torch.tensor([127.0, 0.5, 1.5, 2.5, -2.5])  # scale exactly 1: ties to even
    x[2] = -3.0  # every element at -max
    q, s = ops.quantize_int8(x)
    assert torch.equal(s, torch.tensor([0.0, 127.0, 3.0, 0.0]) / 127.0)
    assert q[1, :5].tolist() == [127, 0, 2, 2, -2]
    assert q[2].eq(-127).all() and q[0].eq(0).all() and q[3].eq(0).all()


def test_quantize_non_contiguous_input():
    x = _rows(30, 64, seed=3).t()  # (64, 30), transposed strides
    assert not x.is_contiguous()
    assert torch.equal(ops.quantize_fp16(x), ops.ref_quantize_fp16(x))
    for got, want in zip(ops.quantize_int8(x), ops.ref_quantize_int8(x), strict=True):
        assert torch.equal(got, want)


# ------------------------------------------------------------------ gather_dequantize
def _stores(n: int, d: int, seed: int):
    x = _rows(n, d, seed)
    q, s = ops.ref_quantize_int8(x)
    return {"fp16": (x.half(), None), "int8": (q, s), "fp32": (x, None), "fp32*s": (x, s)}


@pytest.mark.parametrize("fmt", ["fp16", "int8", "fp32", "fp32*s"])
@pytest.mark.parametrize("n,d,b", [(10, 3, 4), (300, 257, 70), (500, 1280, 64), (7, 1, 0)])
def test_gather_dequantize_equals_reference(fmt, n, d, b):
    values, scales = _stores(n, d, seed=4)[fmt]
    index = torch.randint(0, n, (b,), generator=torch.Generator().manual_seed(5))
    got = ops.gather_dequantize(values, scales, index)
    want = ops.ref_gather_dequantize(values, scales, index)
    assert got.dtype == torch.float32 and got.shape == (b, d)
    # fp16/fp32 are exact by construction; int8 is one float32 product per element, as in
    # the reference, so equal too (the bar would be float rounding).
    assert torch.equal(got, want)


def test_gather_dequantize_repeats_empty_and_int32_index():
    values, scales = _stores(50, 40, seed=6)["int8"]
    idx = torch.tensor([3, 3, 0, 49, 3])
    want = ops.ref_gather_dequantize(values, scales, idx)
    assert torch.equal(ops.gather_dequantize(values, scales, idx), want)
    assert torch.equal(ops.gather_dequantize(values, scales, idx.int()), want)
    empty = ops.gather_dequantize(values, scales, torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 40) and empty.dtype == torch.float32


def test_gather_dequantize_non_contiguous_inputs():
    wide = _rows(80, 96, seed=7).half()
    sliced = wide[:, :48]  # strided rows, dense within a row
    strided = wide[:, ::2]  # not dense within a row
    idx = torch.arange(0, 80, 3).flip(0)[::2]  # non-contiguous index
    scales = torch.rand(160)[::2]
    for values in (sliced, strided):
        for s in (None, scales):
            got = ops.gather_dequantize(values, s, idx)
            assert torch.equal(got, ops.ref_gather_dequantize(values, s, idx))


@pytest.mark.parametrize("bad", [10, -1, 1 << 40])
def test_gather_dequantize_index_out_of_range_raises(bad):
    values, scales = _stores(10, 8, seed=8)["fp16"]
    with pytest.raises(IndexError):
        ops.gather_dequantize(values, scales, torch.tensor([0, bad]))


def test_gather_dequantize_wrong_index_dtype_raises():
    values, _ = _stores(10, 8, seed=9)["fp16"]
    with pytest.raises(RuntimeError, match="int64|int32|Long|Int"):
        ops.gather_dequantize(values, None, torch.tensor([0.0, 1.0]))


def test_other_dtypes_and_devices_fall_back_to_reference():
    x64 = _rows(6, 10, seed=10).double()
    assert torch.equal(ops.quantize_fp16(x64), ops.ref_quantize_fp16(x64))
    assert torch.equal(ops.quantize_int8(x64)[0], ops.ref_quantize_int8(x64)[0])
    idx = torch.tensor([5, 0])
    assert torch.equal(
        ops.gather_dequantize(x64, None, idx), ops.ref_gather_dequantize(x64, None, idx)
    )


# ------------------------------------------------------------------ compiled kernels directly
def test_compiled_ops_validate_inputs():
    lib = _compiled_ops()
    x = torch.randn(4, 6)
    with pytest.raises(RuntimeError, match="float32.*Double"):
        lib.quantize_int8(x.double())
    with pytest.raises(RuntimeError, match="2-D"):
        lib.quantize_fp16(x[0])
    with pytest.raises(RuntimeError, match="float16, int8 or float32"):
        lib.gather_dequantize(x.double(), None, torch.tensor([0]))
    with pytest.raises(RuntimeError, match=r"scales must have shape \(4,\)"):
        lib.gather_dequantize(x, torch.ones(3), torch.tensor([0]))
    with pytest.raises(IndexError, match=r"index\[1\] = 4 is out of range .* 4 rows"):
        lib.gather_dequantize(x.half(), None, torch.tensor([0, 4]))


def test_compiled_ops_parallel_path_matches(monkeypatch):
    """Big enough that at::parallel_for splits the rows over 2 threads."""
    lib = _compiled_ops()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = _rows(256, 1280, seed=11)
        assert torch.equal(lib.quantize_fp16(x), x.half())
        q, s = lib.quantize_int8(x)
        rq, rs = ops.ref_quantize_int8(x)
        assert torch.equal(q, rq) and torch.equal(s, rs)
        idx = torch.randint(0, 256, (200,))
        assert torch.equal(lib.gather_dequantize(q, s, idx), ops.ref_gather_dequantize(q, s, idx))
    finally:
        torch.set_num_threads(before)


def test_compiled_backend_is_active():
    _compiled_ops()
    if os.environ.get("AUTOML_TL_DISABLE_EXT", "") not in ("", "0"):
        pytest.skip("AUTOML_TL_DISABLE_EXT is set in this environment")
    assert ops.backend() in ("cpp", "cpp+cuda"), ops.backend_detail()
    assert "compiled" in ops.backend_detail()


# ------------------------------------------------------------------ fallback (subprocesses)
_FALLBACK_SCRIPT = """
import sys, torch
{prelude}
from automl_tl.features import ops
x = torch.randn(20, 33) * 5
q, s = ops.quantize_int8(x)
rq, rs = ops.ref_quantize_int8(x)
idx = torch.tensor([19, 0, 7])
assert torch.equal(q, rq) and torch.equal(s, rs)
assert torch.equal(ops.quantize_fp16(x), x.half())
assert torch.equal(ops.gather_dequantize(q, s, idx), ops.ref_gather_dequantize(q, s, idx))
print(ops.backend(), "|", ops.backend_detail())
"""


def _run_fallback(prelude: str, **env: str) -> subprocess.CompletedProcess:
    script = _FALLBACK_SCRIPT.format(prelude=prelude)
    return subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_disable_env_uses_reference():
    done = _run_fallback("", AUTOML_TL_DISABLE_EXT="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch | disabled by AUTOML_TL_DISABLE_EXT=1"
    assert done.stderr.count("automl-tl: compiled ops disabled") == 1


def test_missing_extension_says_once_how_to_build():
    # None in sys.modules makes `import automl_tl._C` fail as if it had never been built.
    done = _run_fallback("sys.modules['automl_tl._C'] = None", AUTOML_TL_DISABLE_EXT="0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch | automl_tl._C is not built"
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("automl-tl:")]
    assert len(lines) == 1, done.stderr
    assert "not available (automl_tl._C is not built)" in lines[0]
    assert "pure-torch fallback" in lines[0] and "make" in lines[0]


def test_fake_kernels_let_fake_tensors_compile_and_export_trace_the_ops():
    """The compiled ops have fake (meta) kernels: FakeTensor shapes and dtypes, torch.library's
    own op checks, torch.export and torch.compile (fullgraph) all go through them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    _compiled_ops()
    assert ops.backend() in ("cpp", "cpp+cuda"), ops.backend_detail()  # fakes registered
    gather = torch.ops.automl_tl.gather_dequantize.default
    values, scales = torch.randn(20, 6).to(torch.int8), torch.rand(20)
    index = torch.tensor([3, 0, 19])
    with FakeTensorMode() as mode:
        fake = gather(mode.from_tensor(values), None, mode.from_tensor(index))
        q, s = torch.ops.automl_tl.quantize_int8(mode.from_tensor(torch.randn(5, 7)))
    assert (fake.shape, fake.dtype) == ((3, 6), torch.float32)
    assert (q.shape, q.dtype, s.shape, s.dtype) == ((5, 7), torch.int8, (5,), torch.float32)
    for op, args in (
        (gather, (values, scales, index)),
        (torch.ops.automl_tl.quantize_fp16.default, (torch.randn(4, 3),)),
        (torch.ops.automl_tl.quantize_int8.default, (torch.randn(4, 3),)),
    ):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))

    class Gather(torch.nn.Module):
        def forward(self, v, s, i):
            return torch.ops.automl_tl.gather_dequantize(v, s, i) * 2

    graph = torch.export.export(Gather(), (values, scales, index)).graph
    assert [n.target for n in graph.nodes if n.op == "call_function"][0] == gather
    compiled = torch.compile(Gather(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(values, scales, index), 2 * gather(values, scales, index))

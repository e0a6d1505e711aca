"""Feature-cache ops: our compiled kernels (csrc/) when built, a pure-torch reference otherwise.

The reference functions (`ref_*`) are both the fallback and the test oracle of the compiled
ones. `backend()` names what the public functions dispatch to, `backend_detail()` says why.

The compiled kernels are the optional extension module `automl_tl._C` (built by `make`, or
`pip install --no-build-isolation -e .`); importing it registers `torch.ops.automl_tl.*`.
It is loaded on first use, not at import, and `AUTOML_TL_DISABLE_EXT=1` keeps it unloaded.
Inputs the kernels do not cover (another device or dtype) go to the reference.

Storage formats:
    fp16: values (N, D) float16, scales None
    int8: values (N, D) int8 and one float32 scale per row, x ~= values * scale
          (symmetric, scale = max|row| / 127; a zero row has scale 0)
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from typing import Any, NamedTuple

import torch

__all__ = [
    "backend",
    "backend_detail",
    "quantize_fp16",
    "quantize_int8",
    "gather_dequantize",
    "ref_quantize_fp16",
    "ref_quantize_int8",
    "ref_gather_dequantize",
]

_BUILD_HINT = "Build them with: make (or pip install --no-build-isolation -e .)"
_STORE_DTYPES = frozenset({torch.float16, torch.int8, torch.float32})


# ------------------------------------------------------------------ reference
def ref_quantize_fp16(x: torch.Tensor) -> torch.Tensor:
    """(N, D) float32 -> (N, D) float16, round to nearest even."""
    return x.to(torch.float16)


def ref_quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 -> ((N, D) int8, (N,) float32 scale), symmetric per row."""
    x = x.float()
    scale = x.abs().amax(dim=1) / 127.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.round(x * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def ref_gather_dequantize(
    values: torch.Tensor, scales: torch.Tensor | None, index: torch.Tensor
) -> torch.Tensor:
    """Rows `index` of a stored matrix as a float32 (len(index), D) batch."""
    rows = values.index_select(0, index).float()
    if scales is not None:
        rows *= scales.index_select(0, index)[:, None]
    return rows


# ------------------------------------------------------------------ loading
class _Backend(NamedTuple):
    name: str  # "cpp", "cpp+cuda" or "torch"
    detail: str  # why: where the kernels come from, or why they are not used
    cuda: bool  # the compiled ops also have CUDA kernels
    ops: Any  # (quantize_fp16, quantize_int8, gather_dequantize) op callables, or None


_lock = threading.Lock()
_backend: _Backend | None = None


def _registered(key: str) -> bool:
    """Whether every automl_tl op has a kernel for dispatch key `key`."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    names = ("quantize_fp16", "quantize_int8", "gather_dequantize")
    try:
        return all(has(f"automl_tl::{n}", key) for n in names)
    except RuntimeError:  # operator not registered at all
        return False


def _try_load() -> _Backend:
    """Import automl_tl._C and describe what it registered, or why the reference is used."""
    if os.environ.get("AUTOML_TL_DISABLE_EXT", "") not in ("", "0"):
        return _Backend("torch", "disabled by AUTOML_TL_DISABLE_EXT=1", False, None)
    if _registered("CPU"):
        # Already registered, e.g. by torch.ops.load_library of a build/ .so: loading a second
        # copy would abort the process (one TORCH_LIBRARY per namespace).
        origin = " registered by a library loaded before automl_tl._C"
    else:
        try:
            # Loading the shared library registers torch.ops.automl_tl.*.
            origin = f" from {importlib.import_module('automl_tl._C').__file__}"
        except ModuleNotFoundError:
            return _Backend("torch", "automl_tl._C is not built", False, None)
        except Exception as exc:  # ImportError: ABI or torch version mismatch, missing symbol
            first = (str(exc).strip().splitlines() or [""])[0]
            reason = f"automl_tl._C failed to load: {type(exc).__name__}: {first[:200]}"
            return _Backend("torch", reason, False, None)
        if not _registered("CPU"):
            reason = "automl_tl._C loaded but registered no CPU kernels"
            return _Backend("torch", reason, False, None)
    _register_fakes()
    lib = torch.ops.automl_tl
    ops = (lib.quantize_fp16.default, lib.quantize_int8.default, lib.gather_dequantize.default)
    # OpOverload.__call__ only forwards to ._op; calling that directly saves a Python frame
    # per training batch.
    ops = tuple(getattr(op, "_op", op) for op in ops)
    if _registered("CUDA"):
        return _Backend("cpp+cuda", f"compiled CPU and CUDA kernels{origin}", True, ops)
    return _Backend("cpp", f"compiled CPU kernels{origin}", False, ops)


_FAKES: list[str] = []


def _register_fakes() -> None:
    """Fake (meta) kernels of the compiled ops: output shapes and dtypes without data, so that
    torch.compile, torch.export and FakeTensor tracing can go through them. Registered once
    per process, in Python as torchvision registers its ops' (the schemas live in C++)."""
    if _FAKES:
        return
    from torch.library import register_fake

    @register_fake("automl_tl::quantize_fp16")
    def _fp16(x):
        return x.new_empty(x.shape, dtype=torch.float16)

    @register_fake("automl_tl::quantize_int8")
    def _int8(x):
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:1])

    @register_fake("automl_tl::gather_dequantize")
    def _gather(values, scales, index):
        torch._check(values.dim() == 2, lambda: "values must be a 2-D (N, D) store")
        torch._check(index.dim() == 1, lambda: "index must be 1-D")
        return values.new_empty((index.shape[0], values.shape[1]), dtype=torch.float32)

    _FAKES.append("registered")


def _load() -> _Backend:
    """The backend, loading it on first use; says once on stderr when it is the fallback."""
    global _backend
    with _lock:
        if _backend is None:
            b = _try_load()
            if b.name == "torch":
                if b.detail.startswith("disabled"):
                    note = f"automl-tl: compiled ops {b.detail}; using the pure-torch fallback."
                else:
                    note = (
                        f"automl-tl: compiled ops not available ({b.detail}); "
                        f"using the pure-torch fallback. {_BUILD_HINT}"
                    )
                print(note, file=sys.stderr, flush=True)
            _backend = b
    return _backend


# ------------------------------------------------------------------ dispatch
def backend() -> str:
    """What the public ops run on: "cpp" (compiled CPU kernels), "cpp+cuda" (compiled CPU and
    CUDA kernels) or "torch" (the pure-torch reference)."""
    return (_backend or _load()).name


def backend_detail() -> str:
    """Why `backend()` is what it is: where the kernels were loaded from, or the reason the
    reference is used (not built, failed to load, disabled)."""
    return (_backend or _load()).detail


def quantize_fp16(x: torch.Tensor) -> torch.Tensor:
    """(N, D) float32 -> (N, D) float16, round to nearest even (equal to `x.to(float16)`)."""
    b = _backend or _load()
    if b.ops is not None and x.dtype is torch.float32 and (x.is_cpu or (b.cuda and x.is_cuda)):
        return b.ops[0](x)
    return ref_quantize_fp16(x)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 -> ((N, D) int8, (N,) float32 per-row scale), symmetric per row."""
    b = _backend or _load()
    if b.ops is not None and x.dtype is torch.float32 and (x.is_cpu or (b.cuda and x.is_cuda)):
        return b.ops[1](x)
    return ref_quantize_int8(x)


def gather_dequantize(
    values: torch.Tensor, scales: torch.Tensor | None, index: torch.Tensor
) -> torch.Tensor:
    """Fused gather by row index + dequantise to a float32 training batch.

    Args:
        values: (N, D) float16, int8 or float32 store.
        scales: (N,) float32 per-row scales, or None.
        index: (B,) int64 row numbers; out-of-range numbers raise IndexError.

    Returns:
        (B, D) float32, equal to `values[index].float() * scales[index][:, None]`.
    """
    b = _backend or _load()
    # is_cpu / is_cuda, not device.type: that builds a string, ~1 us per call.
    if (
        b.ops is not None
        and values.dtype in _STORE_DTYPES
        and (values.is_cpu or (b.cuda and values.is_cuda))
    ):
        return b.ops[2](values, scales, index)
    return ref_gather_dequantize(values, scales, index)

"""Feature-cache ops: our compiled kernels (csrc/) when built, a pure-torch reference otherwise.

The reference functions (`ref_*`) are both the fallback and the test oracle of the compiled
ones. `backend()` names what the public functions dispatch to.

Storage formats:
    fp16: values (N, D) float16, scales None
    int8: values (N, D) int8 and one float32 scale per row, x ~= values * scale
          (symmetric, scale = max|row| / 127; a zero row has scale 0)
"""

from __future__ import annotations

import torch

__all__ = [
    "backend",
    "quantize_fp16",
    "quantize_int8",
    "gather_dequantize",
    "ref_quantize_fp16",
    "ref_quantize_int8",
    "ref_gather_dequantize",
]


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


# ------------------------------------------------------------------ dispatch
def backend() -> str:
    """'torch-reference' until the compiled extension is wired in."""
    return "torch-reference"


def quantize_fp16(x: torch.Tensor) -> torch.Tensor:
    """(N, D) float32 -> (N, D) float16."""
    return ref_quantize_fp16(x)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 -> ((N, D) int8, (N,) float32 per-row scale)."""
    return ref_quantize_int8(x)


def gather_dequantize(
    values: torch.Tensor, scales: torch.Tensor | None, index: torch.Tensor
) -> torch.Tensor:
    """Fused gather by row index + dequantise to a float32 training batch."""
    return ref_gather_dequantize(values, scales, index)

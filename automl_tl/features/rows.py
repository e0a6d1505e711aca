"""Rows as the feature store keeps them: float16, or int8 with one float32 scale per row, and
how they become float32 batches (through the compiled gather-dequantise op)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["StoredRows", "joined_rows"]


@dataclass(frozen=True)
class StoredRows:
    """Rows as stored: `values` (N, D) float16 or int8, `scales` (N,) float32 for int8 else None."""

    values: torch.Tensor
    scales: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.values.shape[0]), int(self.values.shape[1])

    def subset(self, index: Any) -> StoredRows:
        """Rows `index` (positions), still quantised."""
        import torch

        index = torch.as_tensor(index, dtype=torch.long)
        scales = None if self.scales is None else self.scales.index_select(0, index)
        return StoredRows(self.values.index_select(0, index), scales)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.dequantize().numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def dequantize(self, index: Any = None) -> torch.Tensor:
        """Rows `index` (default all) as a float32 batch, through ops.gather_dequantize."""
        import torch

        from . import ops

        if index is None:
            index = torch.arange(len(self))
        return ops.gather_dequantize(self.values, self.scales, torch.as_tensor(index).long())


def joined_rows(parts) -> StoredRows:
    """Rows of several views side by side (a joined view, a pair of backbones): float16 as
    stored, int8 dequantised to float16 (rows of different scales cannot share one)."""
    import torch

    if all(r.scales is None for r in parts):
        return StoredRows(torch.cat([r.values for r in parts], 1), None)
    return StoredRows(torch.cat([r.dequantize().half() for r in parts], 1), None)

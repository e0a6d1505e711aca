"""Cheap probes of how well frozen features of each stage separate the classes.

Leave-one-out k-nearest-neighbour accuracy on standardised, L2-normalised features
(FAISS inner-product search): no training, one search per stage, so every cut point of
the backbone can be scored from the features of a single forward pass.
"""

from __future__ import annotations

import numpy as np

__all__ = ["knn_loo_accuracy", "probe_stages"]


def knn_loo_accuracy(x: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Leave-one-out accuracy of a k-NN majority vote (cosine on standardised features)."""
    import faiss

    x = np.asarray(x, dtype=np.float32)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = max(1, min(k, len(x) - 1))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x))
    _, nbrs = index.search(np.ascontiguousarray(x), k + 1)
    nbrs = np.where(nbrs == np.arange(len(x))[:, None], -1, nbrs)  # drop self
    votes = np.zeros((len(x), int(y.max()) + 1))
    for j in range(k + 1):
        ok = nbrs[:, j] >= 0
        votes[np.flatnonzero(ok), y[nbrs[ok, j]]] += 1
    return float((votes.argmax(1) == y).mean())


def _as_float(x) -> np.ndarray:
    """Float32 rows of an array, or of stored (quantised) rows gathered and dequantised by
    the compiled op (`features.ops.gather_dequantize`, through `StoredRows.dequantize`)."""
    if hasattr(x, "dequantize") and hasattr(x, "scales"):
        return x.dequantize().numpy()
    return np.asarray(x, dtype=np.float32)


def probe_stages(stage_feats: list, y: np.ndarray, names: list[str]) -> dict:
    """k-NN leave-one-out accuracy per stage, in stage order; features are float arrays or
    the feature cache's stored rows."""
    return {n: knn_loo_accuracy(_as_float(f), y) for n, f in zip(names, stage_feats, strict=True)}

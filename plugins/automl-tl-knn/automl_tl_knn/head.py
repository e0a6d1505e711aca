"""The k-NN head (torch) and its fit (faiss): what the `faiss_knn` strategy runs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from automl_tl.plugin import HeadTask, TrainResult

from . import EPS, K_CANDIDATES, NAME, TEMPERATURE

__all__ = ["KNNHead", "fit_knn", "l2_normalise"]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 C-contiguous (what faiss wants)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x / norms, dtype=np.float32)


class KNNHead(nn.Module):
    """Pooled features (N, width) -> log vote shares (N, n_classes).

    Traceable by torch.onnx.export (dynamo=False, opset 17): normalise, MatMul against the
    bank, TopK, Softmax, Gather of one-hot labels, ReduceSum, Log. Batch size is dynamic;
    the bank is a constant of the graph (its size grows with the training set).
    """

    def __init__(
        self,
        bank: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        k: int,
        temperature: float = TEMPERATURE,
    ):
        super().__init__()
        if not 1 <= k <= len(bank):
            raise ValueError(f"k={k} must be between 1 and the bank size {len(bank)}")
        self.register_buffer("bank", torch.from_numpy(l2_normalise(bank)))
        onehot = torch.nn.functional.one_hot(torch.as_tensor(labels).long(), n_classes)
        self.register_buffer("onehot", onehot.float())
        self.k, self.temperature = int(k), float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
        sims = x @ self.bank.t()  # (B, N) cosine similarities
        top, idx = torch.topk(sims, self.k, dim=1)  # (B, k)
        weights = torch.softmax(top / self.temperature, dim=1)
        shares = (weights.unsqueeze(-1) * self.onehot[idx]).sum(dim=1)  # (B, n_classes)
        return torch.log(shares + EPS)


def _vote(sims: np.ndarray, idx: np.ndarray, y_bank: np.ndarray, n_classes: int, k: int):
    """The head's soft vote in numpy, on faiss' search results (same formula as KNNHead)."""
    top = sims[:, :k] / TEMPERATURE
    w = np.exp(top - top.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    shares = np.zeros((len(sims), n_classes), dtype=np.float64)
    np.add.at(shares, (np.arange(len(sims))[:, None], y_bank[idx[:, :k]]), w)
    return shares


def fit_knn(task: HeadTask) -> TrainResult:
    """Choose k on the validation split, return the exportable KNNHead.

    The best validation accuracy wins; ties go to the larger k (a smoother vote). The bank
    holds the training split only, so the engine's validation metrics stay honest.
    """
    import faiss  # imported here: listing plugins or strategies should not load faiss

    bank, y_bank = l2_normalise(task.x_train), np.asarray(task.y_train, dtype=np.int64)
    candidates = sorted({min(k, len(bank)) for k in K_CANDIDATES})
    by_k: dict[str, float] = {}
    if len(task.x_val):
        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(bank)
        sims, idx = index.search(l2_normalise(task.x_val), candidates[-1])
        for k in candidates:
            pred = _vote(sims, idx, y_bank, task.n_classes, k).argmax(1)
            by_k[str(k)] = float((pred == np.asarray(task.y_val)).mean())
        k = max(candidates, key=lambda c: (by_k[str(c)], c))
    else:  # no validation images: a middle-of-the-road k
        k = min(5, len(bank))
    val_acc = by_k.get(str(k))
    task.console.note(
        f"{NAME}: k={k} (validation accuracy by k: "
        + (", ".join(f"{c}: {a:.3f}" for c, a in by_k.items()) or "no validation split")
        + ")"
    )
    head = KNNHead(bank, y_bank, task.n_classes, k).eval()
    history = [{"epoch": 1, "k": k, "val_acc": val_acc, "val_acc_by_k": by_k}]
    return TrainResult(head, best_epoch=1, history=history)

"""automl-tl-knn: an example third-party strategy plugin for automl-tl.

Strategy `faiss_knn`: k-nearest-neighbour classification on the cached, L2-normalised
frozen features. k is chosen on the validation split (the search runs on a faiss
IndexFlatIP, i.e. exact cosine similarity); the head that gets exported is a plain torch
module holding the normalised training features and one-hot labels as buffers, so the
ONNX model needs no faiss: cosine similarities (one matmul), top-k, and a soft vote.

It implements all three kinds of hook besides backbones:
  register_strategies(register)  adds `faiss_knn`
  select_strategy(profile)       picks `faiss_knn` for every fit when AUTOML_TL_KNN_AUTO=1
  register_commands(cli)         adds `automl-tl knn-info`
"""

from __future__ import annotations

import os
from importlib import metadata

import numpy as np
import torch
from torch import nn

from automl_tl.hookspecs import hookimpl
from automl_tl.strategy import HeadTask, StrategySpec
from automl_tl.train import TrainResult

__all__ = [
    "KNNHead",
    "NAME",
    "K_CANDIDATES",
    "TEMPERATURE",
    "AUTO_ENV",
    "fit_knn",
    "l2_normalise",
    "register_strategies",
    "select_strategy",
    "register_commands",
]

try:
    __version__ = metadata.version("automl-tl-knn")
except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

NAME = "faiss_knn"
K_CANDIDATES = (1, 3, 5, 10, 20)  # capped at the number of training images
# Neighbour i votes with weight softmax(similarity / TEMPERATURE) over the k neighbours
# (the weighting of Wu et al. 2018 and DINO's k-NN evaluation).
TEMPERATURE = 0.07
# Output = log(vote share + EPS): softmax of it (what `automl-tl predict` reports) gives the
# vote shares back, and a class without votes gets a finite logit.
EPS = 1e-6
AUTO_ENV = "AUTOML_TL_KNN_AUTO"


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


@hookimpl
def register_strategies(register):
    """Register `faiss_knn` (case None: used only by name or via select_strategy)."""
    register(
        StrategySpec(
            name=NAME,
            description="k-nearest neighbours (cosine, soft vote) on frozen features; "
            "k chosen on validation with faiss",
            fit=fit_knn,
        )
    )


@hookimpl
def select_strategy(profile):
    """Override the planner with `faiss_knn` when AUTOML_TL_KNN_AUTO=1; otherwise None,
    which leaves the decision to the planner (and to other plugins). A real plugin would
    look at the DatasetProfile here, e.g. min(profile.per_class.values())."""
    return NAME if os.environ.get(AUTO_ENV, "").strip() == "1" else None


@hookimpl
def register_commands(cli):
    """Add `automl-tl knn-info`."""
    import click

    @cli.command("knn-info")
    def knn_info():
        """Show the automl-tl-knn plugin version and its settings."""
        import faiss

        click.echo(
            f"automl-tl-knn {__version__}: strategy {NAME}, k from {list(K_CANDIDATES)}, "
            f"temperature {TEMPERATURE}, faiss {faiss.__version__}; "
            f"{AUTO_ENV}={os.environ.get(AUTO_ENV, '') or 'unset'}"
        )

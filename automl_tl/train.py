"""Head training on cached features with early stopping on the validation split."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .console import Console

__all__ = ["LinearHead", "HeadConfig", "TrainResult", "train_head"]


class LinearHead(nn.Module):
    """Standardise features with training-set statistics, dropout, then one linear layer."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_classes: int, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(len(mean), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout((x - self.mean) / self.std))


@dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters of head training."""

    epochs: int = 100
    patience: int = 15
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    dropout: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    """The best head, the epoch it came from, and per-epoch history."""

    head: LinearHead
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def _evaluate(head: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[float, float]:
    head.eval()
    with torch.no_grad():
        logits = head(x)
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


def train_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    config: HeadConfig = HeadConfig(),
    console: Console | None = None,
) -> TrainResult:
    """Train a LinearHead with AdamW and class-balanced loss; keep the epoch with the best
    validation accuracy (ties: lower validation loss); stop after `patience` epochs without gain."""
    console = console or Console(quiet=True)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    xt, yt = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train).long()
    xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val).long()
    mean = xt.mean(0).numpy()
    # Floor the scale so near-constant features (dead activations) are not blown up into
    # noise that amplifies rounding differences between runtimes.
    sd = xt.std(0)
    std = sd.clamp(min=0.05 * float(sd.mean()) + 1e-8).numpy()
    head = LinearHead(mean, std, n_classes, config.dropout)
    counts = torch.bincount(yt, minlength=n_classes).float().clamp(min=1)
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (n_classes * counts))
    eval_loss = nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_key, best_epoch, history = None, None, 0, []
    with console.progress("train", config.epochs, unit="epoch") as bar:
        for epoch in range(1, config.epochs + 1):
            head.train()
            for idx in torch.randperm(len(xt), generator=gen).split(config.batch_size):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(head(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
            train_loss, train_acc = _evaluate(head, xt, yt, eval_loss)
            val_loss, val_acc = _evaluate(head, xv, yv, eval_loss)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                }
            )
            bar.update()
            key = (val_acc, -val_loss)
            if best_key is None or key > best_key:
                best, best_key, best_epoch = copy.deepcopy(head.state_dict()), key, epoch
            elif epoch - best_epoch >= config.patience:
                break
    head.load_state_dict(best)
    return TrainResult(head.eval(), best_epoch, history)

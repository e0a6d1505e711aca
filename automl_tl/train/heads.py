"""Head training on cached features with early stopping on the validation split."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from torch import nn

from ..core.console import Console
from ..core.tasks import HeadConfig, TrainResult
from ..features import ops

__all__ = ["LinearHead", "HeadConfig", "TrainResult", "train_head", "head_batch_size"]


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


def _evaluate(head: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[float, float]:
    head.eval()
    with torch.no_grad():
        logits = head(x)
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


def _as_rows(x) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(values, per-row scales or None) of a float array or of stored (quantised) rows."""
    if hasattr(x, "values") and hasattr(x, "scales"):
        return x.values, x.scales
    return torch.as_tensor(np.asarray(x, dtype=np.float32)), None


def _dequantize_all(values: torch.Tensor, scales: torch.Tensor | None, chunk: int = 8192):
    """Every row as float32, gathered in chunks through the compiled op."""
    n = values.shape[0]
    parts = [
        ops.gather_dequantize(values, scales, torch.arange(i, min(i + chunk, n)))
        for i in range(0, n, chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, values.shape[1])


def _feature_scale(values, scales, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and floored standard deviation of the training rows."""
    x = _dequantize_all(values, scales, chunk).double()
    mean, sd = x.mean(0), x.std(0)
    # Floor the scale so near-constant features (dead activations) are not blown up into
    # noise that amplifies rounding differences between runtimes.
    sd = sd.clamp(min=0.05 * float(sd.mean()) + 1e-8)
    return mean.float().numpy(), sd.float().numpy()


def balanced_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class loss weights inversely proportional to class size (1 for balanced data)."""
    counts = torch.bincount(y, minlength=n_classes).float().clamp(min=1)
    return counts.sum() / (n_classes * counts)


def head_batch_size(config: HeadConfig, n_train: int) -> int:
    """The configured batch size, or with `batch_size=None` one that keeps about 32 steps
    per epoch (64 to 1024 rows): small sets get many small steps, large ones fewer big ones."""
    if config.batch_size:
        return config.batch_size
    return int(min(1024, max(64, 2 ** round(np.log2(max(n_train, 1) / 32)))))


@contextlib.contextmanager
def _threads(n: int):
    """Run the block with `n` torch intra-op threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def head_threads(batch: int, width: int) -> int:
    """One thread for small heads: a (64 x 1280) step takes microseconds of arithmetic, and
    on busy cores the threads' synchronisation costs more than it saves (measured: 30 epochs
    of 245 x 1280 took 2.5 s on 1 thread vs 8.9 s on 2 at load 4 on 2 cores)."""
    return 1 if batch * width < 1 << 20 else torch.get_num_threads()


def train_head(
    x_train,
    y_train: np.ndarray,
    x_val,
    y_val: np.ndarray,
    n_classes: int,
    config: HeadConfig | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Train a LinearHead with AdamW and class-balanced loss; keep the epoch with the best
    validation accuracy (ties: lower validation loss); stop after `patience` epochs without gain.

    `x_train` / `x_val` are float arrays or stored rows (`.values` float16/int8/float32 and
    `.scales`, as the feature cache returns them); every training batch is gathered and
    dequantised by `automl_tl.features.ops.gather_dequantize`.
    """
    config = config or HeadConfig()
    values, _ = _as_rows(x_train)
    batch = head_batch_size(config, len(values))
    with _threads(head_threads(batch, values.shape[1])):
        return _train_head(x_train, y_train, x_val, y_val, n_classes, config, console, batch)


def _train_head(x_train, y_train, x_val, y_val, n_classes, config, console, batch):
    console = console or Console(quiet=True)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    values, scales = _as_rows(x_train)
    yt = torch.as_tensor(np.asarray(y_train)).long()
    xv = _dequantize_all(*_as_rows(x_val))
    yv = torch.as_tensor(np.asarray(y_val)).long()
    head = LinearHead(*_feature_scale(values, scales), n_classes, config.dropout)
    loss_fn = nn.CrossEntropyLoss(weight=balanced_weights(yt, n_classes))
    eval_loss = nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_key, best_epoch, history = None, None, 0, []
    with console.progress("train", config.epochs, unit="epoch") as bar:
        for epoch in range(1, config.epochs + 1):
            head.train()
            seen, loss_sum, correct = 0, 0.0, 0
            for idx in torch.randperm(len(yt), generator=gen).split(batch):
                xb, yb = ops.gather_dequantize(values, scales, idx), yt[idx]
                opt.zero_grad(set_to_none=True)
                logits = head(xb)
                loss = loss_fn(logits, yb)
                loss.backward()
                opt.step()
                seen += len(idx)
                loss_sum += loss.item() * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
            val_loss, val_acc = _evaluate(head, xv, yv, eval_loss)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": loss_sum / max(seen, 1),
                    "train_acc": correct / max(seen, 1),
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

"""One full fine-tuning run as it goes: an epoch of training, validation (sharded and summed
under torchrun), the best weights so far, the atomic checkpoint after every epoch, and how a
resumed run picks up the last one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..core.console import Console
from ..core.distributed import average_batchnorm_stats, broadcast_int, sum_across
from ..data.batches import iter_batches
from ..data.images import mix_seed
from ..data.preprocess import Preprocessing
from .checkpoints import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    write_checkpoint,
)
from .model import ExportModel

if TYPE_CHECKING:
    from .tune_full import FinetuneConfig

_STOP_CODES = (None, "early_stopping", "epochs", "callback")


def _rng_state(device: torch.device) -> dict:
    """Torch RNG states (informational: every epoch reseeds from (seed, epoch, rank))."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@dataclass
class FullRun:
    """Everything one fine-tuning run holds; `state` is what a checkpoint stores besides it."""

    model: ExportModel
    net: nn.Module  # the model itself, or its DistributedDataParallel wrapper
    loader: DataLoader
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    loss_fn: nn.Module
    val_items: list
    prep: Preprocessing
    config: FinetuneConfig
    device: torch.device
    rank: int
    world: int
    path: Path
    data: str
    console: Console
    state: dict = field(default_factory=dict)

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        self.net.train()
        if self.config.freeze_batchnorm:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        torch.manual_seed(mix_seed(self.config.seed, epoch, 1_000_003 + self.rank))
        self.loader.sampler.set_epoch(epoch)
        loss_sum, correct, n = 0.0, 0.0, 0
        loader = self.loader
        per_rank = len(loader) * loader.batch_size if loader.drop_last else len(loader.sampler)
        total = per_rank * self.world
        label = f"epoch {epoch}/{self.config.epochs}"
        with self.console.progress(label, total, unit="img") as bar:
            for x, y in self.loader:
                x = x.to(self.device, non_blocking=True)
                x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(self.device, non_blocking=True)
                logits = self.net(x)
                loss = self.loss_fn(logits.float(), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.sched.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += float((logits.detach().argmax(1) == y).sum())
                n += len(y)
                bar.update(len(y) * self.world)
        average_batchnorm_stats(self.model, self.world)
        loss_sum, correct, n = sum_across([loss_sum, correct, n], self.device, self.world)
        return loss_sum / n, correct / n

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Unweighted loss and accuracy on the validation items with the eval preprocessing,
        sharded across processes and summed."""
        self.model.eval()
        shard = self.val_items[self.rank :: self.world]
        labels = torch.tensor([y for _, y in shard], dtype=torch.long)
        loss_sum, correct, pos = 0.0, 0.0, 0
        batch = self.config.batch_size
        # Decoded once per run when _prepare kept them (val_images), else on every pass.
        kept = getattr(self, "val_images", None)
        paths = [p for p, _ in shard]
        batches = kept.batches(batch) if kept is not None else iter_batches(paths, self.prep, batch)
        with self.console.progress("validate", len(self.val_items)) as bar:
            for arr in batches:
                x = torch.from_numpy(arr).to(self.device)
                x = x.contiguous(memory_format=torch.channels_last)
                y = labels[pos : pos + len(arr)].to(self.device)
                pos += len(arr)
                logits = self.model(x).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += float((logits.argmax(1) == y).sum())
                bar.update(len(arr) * self.world)  # the other shards advance alike
        loss_sum, correct, n = sum_across([loss_sum, correct, pos], self.device, self.world)
        return loss_sum / n, correct / n

    def payload(self) -> dict:
        return {
            "format": FORMAT,
            "data": self.data,
            "config": self.config.to_dict(),
            "world_size": self.world,
            "epoch": self.state["epoch"],
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "best": self.state["best"],
            "history": self.state["history"],
            "stop_reason": self.state["stop_reason"],
            "rng": _rng_state(self.device),
        }

    def restore(self, ck: dict) -> None:
        try:
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint '{self.path}' does not fit this model ({type(e).__name__}); "
                "delete it or fine-tune without resume"
            ) from None
        torch.set_rng_state(ck["rng"]["torch"])
        if "cuda" in ck["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"], self.device)
        self.state = {k: ck[k] for k in ("epoch", "best", "history", "stop_reason")}

    def track(self, record: dict) -> str | None:
        """Append an epoch, keep the best weights (accuracy, ties: lower loss); stop reason."""
        st, epoch = self.state, record["epoch"]
        st["history"].append(record)
        st["epoch"] = epoch
        key = [record["val_acc"], -record["val_loss"]]
        if st["best"] is None or key > st["best"]["key"]:
            weights = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            st["best"] = {"epoch": epoch, "key": key, "model": weights}
        stop = None
        if epoch - st["best"]["epoch"] >= self.config.patience:
            stop = "early_stopping"
        elif epoch >= self.config.epochs:
            stop = "epochs"
        st["stop_reason"] = stop
        return stop

    def run_epoch(self, epoch: int, callback) -> str | None:
        """Train one epoch, validate, keep the best, checkpoint; the agreed stop reason."""
        t0 = time.perf_counter()
        train_loss, train_acc = self.train_epoch(epoch)
        val_loss, val_acc = self.evaluate()
        lr_backbone, lr_head = self.sched.get_last_lr()
        seconds = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr_backbone": lr_backbone,
            "lr_head": lr_head,
            "seconds": round(seconds, 3),
        }
        stop = self.track(record)
        if self.rank == 0:
            write_checkpoint(self.path, self.payload())
        self.console.note(
            f"{'':10} train loss {train_loss:.4f} acc {train_acc:.3f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.3f}"
            + (" (best)" if self.state["best"]["epoch"] == epoch else "")
        )
        if callback is not None and callback(dict(record)) and stop is None:
            stop = "callback"
        code = broadcast_int(_STOP_CODES.index(stop), self.device, self.world)
        return _STOP_CODES[code]


def resume_run(run: FullRun, console: Console) -> int:
    """Restore the last complete checkpoint; returns its epoch (0 when starting fresh)."""
    if not run.path.exists():
        console.note(f"no checkpoint at '{run.path}'; fine-tuning from the start")
        return _agreed_epoch(0, run)
    try:
        ck = load_checkpoint(run.path)
    except CheckpointError as e:
        console.warn(f"{e}; ignoring it and fine-tuning from the start")
        return _agreed_epoch(0, run)
    _check_compatible(ck, run.path, run.config, run.data)
    run.restore(ck)
    console.note(f"resuming fine-tuning after epoch {ck['epoch']} from '{run.path}'")
    return _agreed_epoch(int(ck["epoch"]), run)


def _agreed_epoch(epoch: int, run: FullRun) -> int:
    """Every process must have restored the same epoch (one shared checkpoint_dir)."""
    if run.world > 1:
        t = torch.tensor([epoch, -epoch], dtype=torch.int64, device=run.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if int(t[0]) != -int(t[1]):
            raise CheckpointError(
                f"processes read different checkpoints from '{run.path}' (epochs "
                f"{-int(t[1])}..{int(t[0])}); put checkpoint_dir on storage all processes share"
            )
    return epoch


# Config fields that may change between a run and its resume without changing the result.
_RESUME_FREE = ("num_workers", "patience")


def _check_compatible(ck: dict, path: Path, config: FinetuneConfig, data: str) -> None:
    if ck["data"] != data:
        raise CheckpointError(
            f"checkpoint '{path}' was written for other training/validation data; "
            "delete it or fine-tune without resume"
        )
    now = config.to_dict()
    differs = [k for k in now if k not in _RESUME_FREE and ck["config"].get(k, now[k]) != now[k]]
    if differs:
        was = ", ".join(f"{k}={ck['config'][k]!r} (now {now[k]!r})" for k in differs)
        raise CheckpointError(
            f"checkpoint '{path}' was written with {was}; resume with the same settings "
            "or delete it"
        )

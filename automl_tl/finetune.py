"""Fine-tuning the whole network on images (cases 3 and 4).

Augmented training images, AdamW with a lower backbone learning rate, per-step warm-up then
cosine decay, class-weighted loss, early stopping on the validation split, an atomic checkpoint
every epoch (loaded only with `weights_only=True`), and DistributedDataParallel under torchrun.

Every random draw is a function of (seed, epoch, sample or rank): the augmentation of a sample is
seeded by (seed, epoch, index), the shuffle by DistributedSampler(seed + epoch), dropout by
(seed, epoch, rank). So a resumed run repeats an uninterrupted one, and the number of loader
workers does not change the result.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .backbone import BackboneSpec, FeatureExtractor
from .checkpoints import (
    CHECKPOINT_NAME,
    FORMAT,
    CheckpointError,
    data_fingerprint,
    load_checkpoint,
    write_checkpoint,
)
from .console import Console
from .distributed import init_distributed
from .distributed import world as _world
from .embed import iter_batches, pick_device
from .errors import AutoTLError, DataError
from .export import ExportModel
from .imagedata import (
    AUGMENTS,
    ImageDataset,
    class_weights,
    close_loader,
    make_loader,
    mix_seed,
    train_transform,
)
from .preprocess import Preprocessing
from .train import LinearHead

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "FinetuneConfig",
    "FinetuneResult",
    "ImageDataset",
    "build_finetune_model",
    "class_weights",
    "finetune",
    "init_distributed",
    "load_checkpoint",
    "train_transform",
    "warmup_cosine",
]

# Config fields that may change between a run and its resume without changing the result.
_RESUME_FREE = ("num_workers", "patience")
_STOP_CODES = (None, "early_stopping", "epochs", "callback")


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of fine-tuning; `batch_size` is global (split across DDP processes)."""

    epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0
    num_workers: int | None = None  # loader processes; None: auto (see _auto_workers)
    augment: bool = True
    augment_policy: str = "standard"  # a name in imagedata.AUGMENTS
    # BatchNorm statistics kept as loaded: a warm-started head was fitted on features made
    # with them (chest_xray, full fine-tuning from the frozen head with them updating:
    # validation 0.986 -> 0.739 after one epoch)
    freeze_batchnorm: bool = False

    def __post_init__(self):
        checks = {
            "epochs": self.epochs >= 1,
            "patience": self.patience >= 1,
            "batch_size": self.batch_size >= 1,
            "lr_head": self.lr_head > 0,
            "lr_backbone": self.lr_backbone >= 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "num_workers": self.num_workers is None or self.num_workers >= 0,
            "augment_policy": self.augment_policy in AUGMENTS,
        }
        for name, ok in checks.items():
            if not ok:
                raise AutoTLError(
                    f"fine-tuning {name}={getattr(self, name)!r} is out of range; "
                    "see FinetuneConfig for the allowed values"
                )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    """The fine-tuned image -> logits model (best epoch's weights, CPU, eval mode) and history.

    `head` is `model.head`, so code written for TrainResult keeps working when it rebuilds
    ExportModel(model.extractor, result.head) (the extractor is fine-tuned in place).
    """

    model: ExportModel
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "epochs"
    resumed_from: int = 0

    @property
    def head(self) -> nn.Module:
        return self.model.head


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor of optimiser step `step` (0-based): linear warm-up to 1, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_finetune_model(
    spec: BackboneSpec,
    n_classes: int,
    cut: str | None = None,
    pretrained: bool = True,
    weights: str | None = None,
    allow_download: bool = False,
    dropout: float = 0.2,
    seed: int = 0,
) -> ExportModel:
    """Backbone (pretrained or random) up to `cut` (default: last stage) + a new LinearHead."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = spec.build(weights, pretrained=pretrained, allow_download=allow_download)
        idx = len(spec.stages) - 1 if cut is None else spec.stage_index(cut)
        width = spec.stages[idx].width
        head = LinearHead(np.zeros(width), np.ones(width), n_classes, dropout)
    return ExportModel(FeatureExtractor(net, spec.preprocessing, idx), head)


# ------------------------------------------------------------------------------- distributed
def _device(world: int) -> torch.device:
    if world > 1 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return pick_device()


def _sum_across(values: list[float], device: torch.device, world: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


def _average_batchnorm_stats(model: nn.Module, world: int) -> None:
    """Average BatchNorm running statistics across processes: each process updated them from
    its own shard, and every replica must validate and save the same model."""
    if world == 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world)


def _from_rank0(code: int, device: torch.device, world: int) -> int:
    t = torch.tensor([code], dtype=torch.int64, device=device)
    if world > 1:
        dist.broadcast(t, src=0)
    return int(t.item())


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


# ----------------------------------------------------------------------------------- the run
def _freeze_unreached(model: nn.Module, crop_size: int) -> None:
    """Freeze parameters the forward pass never reaches (e.g. the backbone's source classifier,
    stages after the cut), so DDP and the optimiser see only the trained ones."""
    model.eval()
    for p in model.parameters():
        p.grad = None
    model(torch.rand(1, 3, crop_size, crop_size)).float().sum().backward()
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
        p.grad = None


def _make_optimizer(model: ExportModel, config: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW, two groups: backbone (model.extractor) at lr_backbone, head at lr_head."""
    groups = [
        {
            "params": [p for p in model.extractor.parameters() if p.requires_grad],
            "lr": config.lr_backbone,
            "name": "backbone",
        },
        {
            "params": [p for p in model.head.parameters() if p.requires_grad],
            "lr": config.lr_head,
            "name": "head",
        },
    ]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _check_items(train_items, val_items, n_classes: int):
    train = [(str(p), int(y)) for p, y in train_items]
    val = [(str(p), int(y)) for p, y in val_items]
    if not train or not val:
        raise DataError(
            f"fine-tuning needs training and validation images (got {len(train)} and "
            f"{len(val)}); add images or lower the validation fraction"
        )
    bad = sorted({y for _, y in train + val if not 0 <= y < n_classes})
    if bad:
        raise DataError(f"labels {bad} are outside 0..{n_classes - 1}; pass the right n_classes")
    return train, val


def _rng_state(device: torch.device) -> dict:
    """Torch RNG states (informational: every epoch reseeds from (seed, epoch, rank))."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@dataclass
class _Run:
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
        _average_batchnorm_stats(self.model, self.world)
        loss_sum, correct, n = _sum_across([loss_sum, correct, n], self.device, self.world)
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
        loss_sum, correct, n = _sum_across([loss_sum, correct, pos], self.device, self.world)
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
        code = _from_rank0(_STOP_CODES.index(stop), self.device, self.world)
        return _STOP_CODES[code]


def _resume(run: _Run, console: Console) -> int:
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


def _agreed_epoch(epoch: int, run: _Run) -> int:
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


def _prepare(model, train, val, n_classes, prep, config, checkpoint_dir, console) -> _Run:
    """Freeze unreached parameters, move to the device, build loader, optimiser and schedule."""
    rank, world = _world()
    device = _device(world)
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    _freeze_unreached(model.cpu(), prep.crop_size)
    model.to(device, memory_format=torch.channels_last)
    dataset = ImageDataset(train, prep, config.augment, config.seed, policy=config.augment_policy)
    dataset.fill(console)  # decode every image once, before loader workers fork
    loader = make_loader(dataset, config, rank, world, device)
    opt = _make_optimizer(model, config)
    steps = config.epochs * len(loader)
    warmup = round(config.warmup_epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, steps))
    weight = class_weights([y for _, y in train], n_classes).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    data = data_fingerprint(train, val, n_classes)
    run = _Run(
        model,
        model,
        loader,
        opt,
        sched,
        loss_fn,
        val,
        prep,
        config,
        device,
        rank,
        world,
        path,
        data,
        console,
    )
    run.state = {"epoch": 0, "best": None, "history": [], "stop_reason": None}
    from .imagedata import EvalImages

    run.val_images = EvalImages([p for p, _ in val[rank::world]], prep)
    return run


def finetune(
    model: ExportModel,
    train_items: Sequence[tuple[str | os.PathLike, int]],
    val_items: Sequence[tuple[str | os.PathLike, int]],
    n_classes: int,
    preprocessing: Preprocessing,
    config: FinetuneConfig,
    checkpoint_dir: str | os.PathLike,
    resume: bool = False,
    console: Console | None = None,
    callback: Callable[[dict], bool | None] | None = None,
) -> FinetuneResult:
    """Fine-tune every parameter of `model` (extractor + head) on images; keep the best epoch.

    Args:
        model: ExportModel (float NCHW [0, 1] -> logits), trained in place and returned on
            CPU in eval mode with the best epoch's weights. Parameters the forward pass never
            reaches (a backbone's source classifier, stages after the cut) are frozen.
        train_items, val_items: (image path, label index) pairs.
        preprocessing: the backbone's eval preprocessing (validation uses exactly it).
        checkpoint_dir: `finetune.pt` is rewritten there atomically after every epoch.
        resume: continue from that checkpoint (a corrupt or unsafe one is ignored with a
            warning; one from other data or settings raises CheckpointError).
        callback: called on every process after each epoch's checkpoint with its history
            record; rank 0 returning True stops (resumable); an exception leaves the checkpoint.

    Under torch.distributed (see `init_distributed`) the model is wrapped in
    DistributedDataParallel, the training set sharded, validation sharded and summed, only
    rank 0 writes checkpoints and every rank follows rank 0's stop decision. The caller's
    global RNG state is left as it was.
    """
    rank, world = _world()
    console = console or Console(quiet=True)
    if rank:
        console = Console(quiet=True, stream=io.StringIO())
    if not all(isinstance(getattr(model, a, None), nn.Module) for a in ("extractor", "head")):
        raise AutoTLError("finetune needs a model with .extractor and .head (an ExportModel)")
    train, val = _check_items(train_items, val_items, n_classes)
    cuda = _device(world).type == "cuda"
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        run = _prepare(model, train, val, n_classes, preprocessing, config, checkpoint_dir, console)
        start = _resume(run, console) if resume else 0
        if world > 1:
            ids = [run.device.index] if cuda else None
            run.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        stop = run.state["stop_reason"]
        try:
            for epoch in range(start + 1, config.epochs + 1):
                if stop is not None:
                    break
                stop = run.run_epoch(epoch, callback)
        finally:
            close_loader(run.loader)
    best = run.state["best"]
    model.load_state_dict(best["model"])
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    return FinetuneResult(model, best["epoch"], run.state["history"], stop or "epochs", start)

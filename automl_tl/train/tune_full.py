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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.console import Console
from ..core.contract import BackboneSpec
from ..core.distributed import init_distributed
from ..core.distributed import world as _world
from ..core.errors import AutoTLError, DataError
from ..core.machine import pick_device
from ..data.augment import AUGMENTS, train_transform
from ..data.images import ImageDataset, class_weights, close_loader, make_loader
from ..data.preprocess import Preprocessing
from ..features.extractor import FeatureExtractor
from .checkpoints import (
    CHECKPOINT_NAME,
    CheckpointError,
    data_fingerprint,
    load_checkpoint,
)
from .heads import LinearHead
from .model import ExportModel
from .tune_full_run import FullRun, resume_run

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
    augment_policy: str = "standard"  # a name in data.augment.AUGMENTS
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


def _prepare(model, train, val, n_classes, prep, config, checkpoint_dir, console) -> FullRun:
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
    run = FullRun(
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
    from ..data.images import EvalImages

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
        start = resume_run(run, console) if resume else 0
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

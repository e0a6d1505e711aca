"""Fine-tune a tiny conv backbone on a digits folder; run under torchrun or plain python.

    torchrun --nproc_per_node 2 --standalone tests/ddp_finetune_script.py DATA OUT

Every process writes OUT/rank<r>.json (its final weights' checksum and validation accuracy);
each checkpoint write appends the writer's rank to OUT/writers.log. Also the tiny model and
the item split used by tests/test_finetune.py.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from automl_tl import finetune as ft
from automl_tl.backbone import FeatureExtractor
from automl_tl.export import ExportModel
from automl_tl.preprocess import Preprocessing
from automl_tl.train import LinearHead

TINY_PREP = Preprocessing(crop_size=32, resize_size=36)


class TinyNet(nn.Module):
    """Two conv stages with BatchNorm, plus an unused 'source classifier' like real backbones.

    BatchNorm momentum 0.5: with a few steps per epoch the running statistics catch up fast.
    """

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8, momentum=0.5), nn.ReLU()),
                nn.Sequential(
                    nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16, momentum=0.5), nn.ReLU()
                ),
            ]
        )
        self.classifier = nn.Linear(16, 5)

    def forward_stages(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages[: upto + 1]:
            x = stage(x)
            maps.append(x)
        return maps


def tiny_model(n_classes: int, seed: int = 0) -> ExportModel:
    """A randomly initialised (seeded) tiny ExportModel taking 32x32 inputs."""
    torch.manual_seed(seed)
    net = TinyNet()
    head = LinearHead(torch.zeros(16).numpy(), torch.ones(16).numpy(), n_classes, dropout=0.1)
    return ExportModel(FeatureExtractor(net, TINY_PREP, 1), head)


def split_items(folder: Path, val_per_class: int = 4):
    """Folder-per-class -> (train, val) lists of (path, label index), the last files to val."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    train, val = [], []
    for label, name in enumerate(classes):
        files = sorted((folder / name).glob("*.png"))
        train += [(f, label) for f in files[:-val_per_class]]
        val += [(f, label) for f in files[-val_per_class:]]
    return train, val, classes


TINY_CONFIG = ft.FinetuneConfig(
    epochs=8,
    patience=8,
    batch_size=8,
    lr_head=1e-2,
    lr_backbone=1e-2,
    weight_decay=1e-4,
    warmup_epochs=1,
    label_smoothing=0.0,
    num_workers=0,
    augment=False,
)


def run(data: Path, out: Path, epochs: int = TINY_CONFIG.epochs) -> dict:
    """Fine-tune the tiny model on `data` in this process (one rank of a group, or alone);
    write OUT/rank<r>.json and log every checkpoint write's rank to OUT/writers.log."""
    rank, world = ft.init_distributed()
    out.mkdir(parents=True, exist_ok=True)
    write = ft.write_checkpoint

    def logged_write(path, payload):
        with open(out / "writers.log", "a") as fh:
            fh.write(f"{rank}\n")
        write(path, payload)

    train, val, classes = split_items(data)
    config = ft.FinetuneConfig(**{**TINY_CONFIG.to_dict(), "epochs": epochs})
    model = tiny_model(len(classes))
    with mock.patch.object(ft, "write_checkpoint", logged_write):
        result = ft.finetune(model, train, val, len(classes), TINY_PREP, config, out / "ckpt")
    checksum = float(sum(p.double().sum() for p in result.model.state_dict().values()))
    summary = {
        "rank": rank,
        "world": world,
        "pid": os.getpid(),
        "best_epoch": result.best_epoch,
        "best_val_acc": result.history[result.best_epoch - 1]["val_acc"],
        "history": result.history,
        "checksum": checksum,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=TINY_CONFIG.epochs)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.data, args.out, args.epochs)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

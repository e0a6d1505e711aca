"""Helpers the tests share (one module: tests never import each other): the real datasets
beside the checkout, the CLI run as a user runs it, small data subsets, and the tiny conv
backbone of the fine-tuning tests (also run under torchrun by ddp_finetune_script.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CLI = str(Path(sys.executable).parent / "automl-tl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# A fit whose subject is not the backbone search names one backbone: `auto` (the default)
# embeds and measures every Lite backbone, about 9 s more for a small fit. The search and the
# default path have their own tests (test_backbone_search, test_backbone_pair, test_api...).
LITE0 = ["--backbone", "efficientnet_lite0"]


def shared_dataset(name: str) -> Path:
    """Path of a dataset in ../shared/datasets, or skip the test with the reason."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real dataset {path} is absent (it lives beside the checkout in shared/)")
    return path


def run(*args, cwd=None, env=None):
    """The installed `automl-tl` command with these arguments, as a user runs it."""
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


def assert_one_line_error(res, *needles):
    """A failed command that said one line, `error: ...`, holding every needle."""
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def make_subset(src: Path, dst: Path, classes, n_train: int, n_val: int) -> Path:
    """dst/{train,val}/<class>/ with symlinks to the first images of src/train/<class>."""
    for c in classes:
        files = image_files(src / "train" / c)
        for split, chunk in (("train", files[:n_train]), ("val", files[n_train : n_train + n_val])):
            folder = dst / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for f in chunk:
                (folder / f.name).symlink_to(f)
    return dst


# ------------------------------------------------------------------ the tiny backbone
from automl_tl.data.preprocess import Preprocessing  # noqa: E402
from automl_tl.features.extractor import FeatureExtractor  # noqa: E402
from automl_tl.train import tune_full as ft  # noqa: E402
from automl_tl.train.heads import LinearHead  # noqa: E402
from automl_tl.train.model import ExportModel  # noqa: E402

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

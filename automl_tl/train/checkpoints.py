"""Fine-tuning checkpoints: written atomically, read only with torch.load(weights_only=True)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from ..core.errors import AutoTLError
from ..core.files import RUN_FULL_FIX, write_atomic

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "CheckpointError",
    "data_fingerprint",
    "load_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_NAME = "finetune.pt"
FORMAT = "automl_tl.finetune/1"


class CheckpointError(AutoTLError):
    """A fine-tuning checkpoint cannot be read safely or belongs to another run."""


def write_checkpoint(path: Path, payload: dict) -> None:
    """torch.save in memory first (so a full disk can say how much it needs), then a
    temporary file in the same folder, fsync and atomic rename; nothing is left on failure."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(path, buf.getbuffer(), fsync=True, fix=RUN_FULL_FIX)


def load_checkpoint(path: str | os.PathLike, fmt: str = FORMAT) -> dict:
    """Read a fine-tuning checkpoint with `torch.load(weights_only=True)` (never runs pickled
    code); raise CheckpointError when it is unreadable, truncated, unsafe or not one of ours."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read safely ({type(e).__name__}: {reason})"
        ) from None
    keys = ("epoch", "model", "optimizer", "scheduler", "best", "history", "config", "data")
    if not isinstance(ck, dict) or ck.get("format") != fmt or any(k not in ck for k in keys):
        raise CheckpointError(f"'{path}' is not a {fmt} checkpoint")
    return ck


def data_fingerprint(train_items, val_items, n_classes: int) -> str:
    text = json.dumps([n_classes, train_items, val_items])
    return hashlib.sha256(text.encode()).hexdigest()

"""Composed models remembered by content: a warm re-fit that ends with the same head publishes
the model.onnx it composed before (sha256-verified) instead of composing it again, which
would import the onnx package (about a second). The newest COMPOSED_KEEP are kept beside the
embedding graph in the cache's models/ folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.errors import (
    CACHE_FULL_FIX,
    DiskFullError,
    OutputError,
    cache_full_warning,
)
from ..core.files import write_atomic
from .onnx import publish_model

if TYPE_CHECKING:
    from ..core.console import Console


COMPOSED_PREFIX, COMPOSED_KEEP = "composed-", 8  # newest 8 kept


def composed_key(backbone_sha256: str, stage_output: str, head: nn.Module, metadata: dict) -> str:
    """What a composed model is made of, as a sha256: the embedding graph (by checksum), the
    tensor it is cut at, the head (class, structure, every state-dict tensor's bytes), the
    metadata, and the versions of the code that compose it. Equal keys give equal files."""
    from importlib.metadata import version

    from .. import __version__

    h = hashlib.sha256()
    for part in (
        "composed-v1",
        __version__,
        torch.__version__,
        version("onnx"),
        backbone_sha256,
        stage_output,
        f"{type(head).__module__}.{type(head).__qualname__}",
        repr(head),
        json.dumps(metadata, sort_keys=True),
    ):
        h.update(part.encode() + b"\0")
    for name, tensor in sorted(head.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode() + b"\0")
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _read_verified(path: Path) -> bytes | None:
    """The bytes of a memoised model whose sidecar sha256 matches them, else None. The bytes
    are read once and hashed as read, so what is checked is what gets published."""
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    return data


def _remember(folder: Path, key: str, data: bytes, console: Console | None) -> None:
    """Keep `data` as the composed model of `key` (file, then its sha256 sidecar, each
    atomic) and drop all but the newest COMPOSED_KEEP. Never fails the fit: a full disk
    warns once (like the feature cache), other write errors only skip the memo."""
    path = folder / f"{COMPOSED_PREFIX}{key}.onnx"
    record = json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "key": key}).encode()
    try:
        write_atomic(path, data, fix=CACHE_FULL_FIX)
        write_atomic(path.with_suffix(".json"), record, fix=CACHE_FULL_FIX)
    except DiskFullError as e:
        if console is not None:
            console.warn_once(("cache-full", str(folder.parent)), cache_full_warning(e))
        return
    except OutputError:
        return
    _prune(folder)


def _prune(folder: Path, keep: int = COMPOSED_KEEP) -> None:
    """Delete all but the `keep` most recently used composed models. A process copying one
    that is deleted here has it open already (POSIX keeps its bytes) or finds it missing
    and composes again."""
    found = []
    for p in folder.glob(f"{COMPOSED_PREFIX}*.onnx"):
        with contextlib.suppress(OSError):
            found.append((p.stat().st_mtime_ns, p))
    for _, p in sorted(found, reverse=True)[keep:]:
        for victim in (p, p.with_suffix(".json")):
            with contextlib.suppress(OSError):
                victim.unlink()
    # a sidecar whose model another process pruned meanwhile (models are written first)
    for sidecar in folder.glob(f"{COMPOSED_PREFIX}*.json"):
        if not sidecar.with_suffix(".onnx").exists():
            with contextlib.suppress(OSError):
                sidecar.unlink()


def reuse_composed(backbone_onnx: Path, key: str, path: Path) -> bool:
    """Publish at `path` the remembered composition of `key` (kept beside the embedding graph
    `backbone_onnx` as composed-<key>.onnx + .json holding its sha256) when its checksum
    matches; False (nothing written) when it is missing, damaged or planted. Needs no onnx
    import, which is most of what composing costs on a warm run."""
    memo = Path(backbone_onnx).parent / f"{COMPOSED_PREFIX}{key}.onnx"
    data = _read_verified(memo)
    if data is None:
        return False
    publish_model(Path(path), data)
    with contextlib.suppress(OSError):  # most recently used: kept longest by _prune
        os.utime(memo)
    return True


def forget_composed(backbone_onnx: Path, key: str) -> None:
    """Drop the remembered composition of `key` (it failed the check of its fit)."""
    memo = Path(backbone_onnx).parent / f"{COMPOSED_PREFIX}{key}.onnx"
    for victim in (memo, memo.with_suffix(".json")):
        with contextlib.suppress(OSError):
            victim.unlink()


def remember_composed(backbone_onnx: Path, key: str, path: Path, console: Console | None) -> None:
    """Remember the model at `path` (composed and checked) as the composition of `key`."""
    _remember(Path(backbone_onnx).parent, key, Path(path).read_bytes(), console)

"""Everything the cache folder holds besides the feature store, counted and cleared: the
exported embedding graphs and remembered composed models (models/), the memo of facts
(memo.sqlite), and source banks built into the default place (banks/)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .memo import Memo

__all__ = ["folder_bytes", "contents", "clear_contents"]


def folder_bytes(folder: Path) -> int:
    """Bytes of the files below `folder` (0 when it is absent); files deleted meanwhile by
    another process are skipped."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _memo_files(root: Path) -> list[Path]:
    return [root / f"memo.sqlite{suffix}" for suffix in ("", "-wal", "-shm")]


def contents(root: Path) -> dict:
    """{models, memo, banks}: each its files and bytes (the memo: its facts by namespace)."""
    root = Path(root)
    models = sorted((root / "models").glob("*")) if (root / "models").is_dir() else []
    banks = sorted((root / "banks").glob("*.npz")) if (root / "banks").is_dir() else []
    memo_bytes = sum(p.stat().st_size for p in _memo_files(root) if p.is_file())
    facts = {}
    if (root / "memo.sqlite").is_file():
        memo = Memo(root)
        try:
            facts = memo.counts()
        finally:
            memo.close()
    return {
        "models": {"files": len(models), "bytes": folder_bytes(root / "models")},
        "memo": {"facts": facts, "bytes": memo_bytes},
        "banks": {"files": len(banks), "bytes": sum(p.stat().st_size for p in banks)},
    }


def clear_contents(root: Path) -> dict:
    """Remove the models, the memo's facts and the banks; returns what was there."""
    root = Path(root)
    before = contents(root)
    for folder, pattern in ((root / "models", "*"), (root / "banks", "*.npz")):
        if folder.is_dir():
            for path in folder.glob(pattern):
                with contextlib.suppress(OSError):
                    path.unlink()
    if (root / "memo.sqlite").is_file():
        memo = Memo(root)  # emptied through SQLite: a fit using it meanwhile stays consistent
        try:
            memo.clear()
        finally:
            memo.close()
    return before

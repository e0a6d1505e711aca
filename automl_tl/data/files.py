"""Finding image files: what counts as hidden, walking folders without following links into
loops, class folders, and the files or folders a user names for prediction. Standard
library only (the torch-free Predictor uses it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import AutoTLError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass(frozen=True)
class Sample:
    """One labelled file; `split` is None unless the data layout fixed it."""

    path: Path
    label: str
    split: str | None = None
    digest: str = ""


def hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def walk_files(folder: Path, exclude: frozenset[Path] = frozenset()) -> list[Path]:
    """Every non-hidden file below folder, sorted; symlinked folders are not followed (no loops)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(
            d for d in dirnames if not hidden(d) and (Path(dirpath) / d).resolve() not in exclude
        )
        found.extend(Path(dirpath) / f for f in filenames if not hidden(f))
    return sorted(found)


def class_dirs(folder: Path, exclude: frozenset[Path] = frozenset()) -> list[Path]:
    """Non-hidden sub-folders; a linked one is followed unless it leads back to `folder` or
    above (a loop that would make every image a member of a phantom class)."""
    here = folder.resolve()
    with os.scandir(folder) as entries:  # the entry's type needs no stat per file
        dirs = [Path(e.path) for e in entries if not hidden(e.name) and e.is_dir()]
    return sorted(
        p for p in dirs if p.resolve() not in exclude and not here.is_relative_to(p.resolve())
    )


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # name too long, NUL byte
        return False


def expand_paths(paths) -> list[Path]:
    """Files as given; folders searched recursively for image files (hidden entries and
    __MACOSX skipped, as the audit does)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not hidden(d))
                out += [
                    Path(dirpath) / f
                    for f in sorted(filenames)
                    if not hidden(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES
                ]
        elif p.is_file():
            out.append(p)
        else:
            raise AutoTLError(f"'{p}' does not exist; pass image files or folders")
    return out

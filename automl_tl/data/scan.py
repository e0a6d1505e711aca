"""scan: what labelled images a folder or a CSV holds, as a Manifest (path, label, split per
file, how the layout was read). Nothing is opened here; the audit opens every file once."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import DataError
from .files import Sample, is_file
from .layout import read_folder


@dataclass
class Manifest:
    """What scan found: samples, every class folder seen, and problems met while scanning."""

    root: Path
    samples: list[Sample]
    classes_seen: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)
    # How the layout was read: {"form", "root", "splits" {folder: split}, "messages"
    # [{"level": "note" | "warning", "text"}]}; each message is one line for the user.
    layout: dict = field(default_factory=dict)


def _is_header(row: list[str], rest: list[list[str]], root: Path) -> bool:
    """`path,label`, or another header (`filename,class`): a first row whose path names no
    file and whose label no later row uses, so that it does not become a phantom class."""
    cells = [c.strip() for c in row[:2]]
    if [c.lower() for c in cells] == ["path", "label"]:
        return True
    if len(cells) < 2 or not all(cells):
        return False
    return cells[1] not in {r[1].strip() for r in rest if len(r) > 1} and not is_file(
        root / cells[0]
    )


def _scan_csv(path: Path) -> Manifest:
    root = path.parent.resolve()
    samples, problems, classes = [], [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(
            f"cannot read '{path}' as a CSV file ({e}); save it as UTF-8 text with "
            "one path,label row per image"
        ) from None
    first = 1
    if rows and _is_header(rows[0], rows[1:], root):
        rows, first = rows[1:], 2
    for lineno, row in enumerate(rows, start=first):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            problems.append((f"{path}:{lineno}", "row is not 'path,label'"))
            continue
        rel, label = row[0].strip(), row[1].strip()
        try:
            full = (root / rel).resolve()
        except (OSError, ValueError, RuntimeError) as e:  # NUL byte, symlink loop
            full, why = None, f"invalid path: {e}"
        if full is None:
            problems.append((rel, why))
        elif not full.is_relative_to(root):
            problems.append((rel, f"path is outside the CSV's folder {root}"))
        elif not is_file(full):
            problems.append((rel, "file not found"))
        else:
            samples.append(Sample(full, label))
        if label not in classes:
            classes.append(label)
    return Manifest(root, samples, sorted(classes), problems)


def scan(path: str | os.PathLike, exclude: tuple[str | os.PathLike, ...] = ()) -> Manifest:
    """Find labelled images: DIR/<class>/*, DIR/<split>/<class>/* (train/training,
    val/valid/validation/dev, test/testing/eval in any case), either inside one wrapper
    folder, or a path,label CSV. How the layout was read is in `Manifest.layout`."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"data path '{path}' does not exist; pass a folder of class sub-folders "
            "or a CSV file of path,label rows"
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(
                f"'{path}' is a file but not a .csv; pass a folder of class sub-folders "
                "or a CSV file of path,label rows"
            )
        manifest = _scan_csv(path)
        manifest.layout = {"form": "csv", "root": str(manifest.root), "splits": {}, "messages": []}
        return manifest
    samples, classes, layout = read_folder(path, exclude)
    return Manifest(path.resolve(), samples, sorted(classes), layout=layout)

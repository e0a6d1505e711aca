"""How a folder of images is laid out: class folders, split folders (train/val/test in their
many spellings), lone wrapper folders, nested folds; every assumption made is kept as a
one-line message for the user."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.errors import DataError
from .files import IMAGE_SUFFIXES, Sample, class_dirs, hidden, is_file, walk_files

# Folder names (any case) that mean a split rather than a class.
_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "eval": "test",
}


# Words that may surround a split word without changing its meaning: "Train_set", "test-images".
_FILLER = {"set", "data", "dataset", "images", "imgs", "img", "split", "folder", "files"}


def _scan_class_tree(
    folder: Path, split_name: str | None, exclude: frozenset[Path]
) -> tuple[list[Sample], list[str]]:
    samples, classes = [], []
    for cdir in class_dirs(folder, exclude):
        classes.append(cdir.name)
        samples.extend(Sample(p, cdir.name, split_name) for p in walk_files(cdir, exclude))
    return samples, classes


def _split_of(name: str) -> str | None:
    """The split a folder name stands for ("Training" -> train, "Test_set" -> test), or None."""
    low = name.lower()
    if low in _SPLIT_WORDS:
        return _SPLIT_WORDS[low]
    words = [w for w in re.split(r"[^a-z0-9]+", low) if w]
    core = [w for w in words if w not in _FILLER]
    if len(words) > 1 and len(core) == 1 and core[0] in _SPLIT_WORDS:
        return _SPLIT_WORDS[core[0]]
    return None


def _has_images(folder: Path) -> bool:
    """Whether image files sit directly in `folder` (not below it)."""
    try:
        return any(
            not hidden(p.name) and p.suffix.lower() in IMAGE_SUFFIXES and is_file(p)
            for p in folder.iterdir()
        )
    except OSError:
        return False


def _subfolders(folder: Path, exclude: frozenset[Path]) -> list[Path]:
    try:
        return class_dirs(folder, exclude)
    except OSError:  # unreadable: audit-time problems are reported by the class scan itself
        return []


class _Layout:
    """Messages gathered while reading a folder layout."""

    def __init__(self, root: Path):
        self.root, self.messages, self.splits = root, [], {}

    def note(self, text: str) -> None:
        self.messages.append({"level": "note", "text": text})

    def warn(self, text: str) -> None:
        self.messages.append({"level": "warning", "text": text})

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root)) or "."
        except ValueError:
            return str(path)


def _names(folders: list[Path], limit: int = 4) -> str:
    shown = ", ".join(f"'{p.name}'" for p in folders[:limit])
    return shown + (f" and {len(folders) - limit} more" if len(folders) > limit else "")


def _unwrap(path: Path, skip: frozenset[Path], lay: _Layout) -> Path:
    """Step into a lone wrapper folder (`data/brain_tumor/<layout>`): one sub-folder and no
    images beside it can never be a class layout of its own."""
    root = path
    for _ in range(5):
        subs = _subfolders(root, skip)
        if len(subs) != 1 or _has_images(root) or not _subfolders(subs[0], skip):
            break
        root = subs[0]
    if root != path:
        lay.note(f"layout: '{path}' holds one folder only; reading the data in '{lay.rel(root)}'")
        kind = _split_of(root.name)
        if kind in ("val", "test") and not any(_split_of(p.name) for p in _subfolders(root, skip)):
            lay.warn(
                f"layout: the only labelled folder is the {kind} split '{root.name}'; it is used "
                "for training with validation carved from it, so there is no test split; add a "
                f"train/ folder beside '{root.name}' to keep it for testing"
            )
    return root


def _nested_check(folder: Path, class_dirs: list[Path], skip: frozenset[Path], lay: _Layout):
    """Warn when class folders hold sub-folders with images: the sub-folders may be the real
    classes (or folds), and pooling them is then a different problem."""
    for cdir in class_dirs:
        inner = [d for d in _subfolders(cdir, skip) if _has_images(d) or _subfolders(d, skip)]
        if inner:
            lay.warn(
                f"layout: class folder '{lay.rel(cdir)}' holds sub-folders ({_names(inner)}); "
                f"each of the {len(class_dirs)} folders in '{lay.rel(folder)}' is read as one "
                "class with every image below it; if the sub-folders are the classes, point fit "
                f"at '{cdir}' or move them up one level"
            )
            return


def _scan_splits(root, split_dirs, others, skip, lay) -> tuple[list[Sample], set[str]]:
    samples, classes = [], set()
    used = []
    for d in split_dirs:
        kind = _split_of(d.name)
        subs = _subfolders(d, skip)
        if len(subs) == 1 and _split_of(subs[0].name) == kind:  # train/train/<classes>
            d, subs = subs[0], _subfolders(subs[0], skip)
        if not subs:
            lay.warn(
                f"layout: split folder '{lay.rel(d)}' holds no class sub-folders, so its "
                f"images have no labels and are LEFT OUT; put them in '{d.name}/<class>/'"
            )
            continue
        used.append((d, kind))
    if not any(kind == "train" for _, kind in used):
        pool = next((k for k in ("val", "test") if any(kind == k for _, kind in used)), None)
        if pool is not None:
            names = [d.name for d, kind in used if kind == pool]
            used = [(d, "train" if kind == pool else kind) for d, kind in used]
            lay.warn(
                f"layout: no train folder in '{root}'; {', '.join(names)} is used for training "
                f"with validation carved from it{' and test kept apart' * (pool == 'val')}; "
                "name the training folder 'train' to change this"
            )
    for d, kind in used:
        lay.splits[lay.rel(d)] = kind
        subs = _subfolders(d, skip)
        _nested_check(d, subs, skip, lay)
        s, c = _scan_class_tree(d, kind, skip)
        samples += s
        classes.update(c)
    if others:
        lay.warn(
            f"layout: '{root}' holds split folders and other folders ({_names(others)}); the "
            "other folders are LEFT OUT; move them into a split folder to use them"
        )
    kinds = {k for k in lay.splits.values()}
    mapping = ", ".join(f"{name} -> {kind}" for name, kind in lay.splits.items())
    val = "from the val folder" if "val" in kinds else "carved from train"
    test = "; test kept apart for one final evaluation" if "test" in kinds else ""
    lay.note(f"layout: split folders {mapping}; validation {val}{test}")
    return samples, classes


def read_folder(
    path: Path, exclude: tuple[str | os.PathLike, ...] = ()
) -> tuple[list[Sample], set[str], dict]:
    """(samples, class names, layout record) of a folder: DIR/<class>/*, DIR/<split>/<class>/*
    or either inside lone wrapper folders; the record says how it was read, in messages."""
    skip = frozenset(Path(p).resolve() for p in exclude)  # e.g. a run folder inside the data
    lay = _Layout(path)
    root = _unwrap(path, skip, lay)
    subs = class_dirs(root, skip)
    split_dirs = [d for d in subs if _split_of(d.name)]
    labelled = [d for d in split_dirs if _subfolders(d, skip)]
    others = [d for d in subs if not _split_of(d.name)]
    form = "splits" if labelled else "classes"
    if labelled:
        samples, classes = _scan_splits(root, split_dirs, others, skip, lay)
    else:
        if split_dirs and not others:
            raise DataError(
                f"'{root}' holds split folders ({_names(split_dirs)}) with images but no class "
                "sub-folders, so the images have no labels; lay them out as "
                "<split>/<class>/<images> or pass a CSV of path,label rows"
            )
        if split_dirs:
            one = len(split_dirs) == 1
            lay.note(
                f"layout: {_names(split_dirs)} in '{root}' {'holds' if one else 'hold'} images "
                f"directly, so {'it is' if one else 'they are'} read as "
                f"{'a class' if one else 'classes'}, not as a split"
            )
        _nested_check(root, subs, skip, lay)
        samples, found = _scan_class_tree(root, None, skip)
        classes = set(found)
    if not classes:
        raise DataError(
            f"no class folders in '{root}'; expected '{root}/<class name>/<image files>'"
        )
    layout = {"form": form, "root": str(root.resolve()), "splits": lay.splits}
    layout["messages"] = lay.messages
    return samples, classes, layout

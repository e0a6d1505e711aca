"""Scan a labelled image folder or CSV, audit every file, split train/validation.

scan -> manifest of (path, label, split) plus how the folder layout was read; audit -> usable
samples + listed problems + files that leaked across splits; split -> a user-given validation
folder wins, else validation is carved (stratified, seeded) out of the training images, and a
test folder is always kept apart for one final evaluation.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import stat
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .console import Console
from .errors import DataError
from .memo import Memo
from .preprocess import DEFAULT_MAX_PIXELS, load_rgb

__all__ = ["Sample", "Manifest", "AuditReport", "scan", "audit", "split", "split_summary"]

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
_SPLIT_ORDER = {"train": 0, None: 0, "val": 1, "test": 2}
_SPLIT_NOUN = {"train": "training", None: "training", "val": "validation", "test": "test"}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass(frozen=True)
class Sample:
    """One labelled file; `split` is None unless the data layout fixed it."""

    path: Path
    label: str
    split: str | None = None
    digest: str = ""


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


@dataclass
class AuditReport:
    """Usable samples, the files left out with their reason, and conversions applied."""

    samples: list[Sample]
    classes: list[str]
    problems: list[tuple[str, str]]
    conversions: dict[str, int]
    left_out_classes: list[str]
    scanned: int
    layout: dict = field(default_factory=dict)
    # {split: {earlier split: n}}: copies left out of `split` because the same bytes were
    # already in an earlier split (train before val before test).
    leakage: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        per_class = Counter(s.label for s in self.samples)
        return {
            "files_scanned": self.scanned,
            "usable": len(self.samples),
            "classes": self.classes,
            "per_class": {c: per_class[c] for c in self.classes},
            "left_out_classes": self.left_out_classes,
            "problems": [{"path": p, "reason": r} for p, r in self.problems],
            "conversions": self.conversions,
            "layout": self.layout,
            "leakage": self.leakage,
            "leakage_messages": leakage_messages(self.leakage),
        }


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _walk_files(folder: Path, exclude: frozenset[Path] = frozenset()) -> list[Path]:
    """Every non-hidden file below folder, sorted; symlinked folders are not followed (no loops)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(
            d for d in dirnames if not _hidden(d) and (Path(dirpath) / d).resolve() not in exclude
        )
        found.extend(Path(dirpath) / f for f in filenames if not _hidden(f))
    return sorted(found)


def _class_dirs(folder: Path, exclude: frozenset[Path] = frozenset()) -> list[Path]:
    """Non-hidden sub-folders; a linked one is followed unless it leads back to `folder` or
    above (a loop that would make every image a member of a phantom class)."""
    here = folder.resolve()
    with os.scandir(folder) as entries:  # the entry's type needs no stat per file
        dirs = [Path(e.path) for e in entries if not _hidden(e.name) and e.is_dir()]
    return sorted(
        p for p in dirs if p.resolve() not in exclude and not here.is_relative_to(p.resolve())
    )


def _scan_class_tree(
    folder: Path, split_name: str | None, exclude: frozenset[Path]
) -> tuple[list[Sample], list[str]]:
    samples, classes = [], []
    for cdir in _class_dirs(folder, exclude):
        classes.append(cdir.name)
        samples.extend(Sample(p, cdir.name, split_name) for p in _walk_files(cdir, exclude))
    return samples, classes


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # name too long, NUL byte
        return False


def _is_header(row: list[str], rest: list[list[str]], root: Path) -> bool:
    """`path,label`, or another header (`filename,class`): a first row whose path names no
    file and whose label no later row uses, so that it does not become a phantom class."""
    cells = [c.strip() for c in row[:2]]
    if [c.lower() for c in cells] == ["path", "label"]:
        return True
    if len(cells) < 2 or not all(cells):
        return False
    return cells[1] not in {r[1].strip() for r in rest if len(r) > 1} and not _is_file(
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
        elif not _is_file(full):
            problems.append((rel, "file not found"))
        else:
            samples.append(Sample(full, label))
        if label not in classes:
            classes.append(label)
    return Manifest(root, samples, sorted(classes), problems)


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
            not _hidden(p.name) and p.suffix.lower() in _IMAGE_SUFFIXES and _is_file(p)
            for p in folder.iterdir()
        )
    except OSError:
        return False


def _subfolders(folder: Path, exclude: frozenset[Path]) -> list[Path]:
    try:
        return _class_dirs(folder, exclude)
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
    skip = frozenset(Path(p).resolve() for p in exclude)  # e.g. a run folder inside the data
    lay = _Layout(path)
    root = _unwrap(path, skip, lay)
    subs = _class_dirs(root, skip)
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
    return Manifest(path.resolve(), samples, sorted(classes), layout=layout)


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_file(sample: Sample) -> tuple[Sample, str | None]:
    """(sample with digest, problem or None): the cheap half of the check, reading bytes only."""
    try:
        st = sample.path.stat()
        if not stat.S_ISREG(st.st_mode):  # a pipe would block the reader forever
            return sample, "not a regular file (a pipe, socket or device)"
        if st.st_size == 0:
            return sample, "empty file (0 bytes)"
        return replace(sample, digest=_digest(sample.path)), None
    except OSError as e:
        return sample, f"unreadable file: {e.strerror or e}"


def _decode_check(path: Path, max_pixels: int) -> dict:
    """The verdict on one file's content: {"problem": str | None, "mode": original mode}."""
    try:
        with Image.open(path) as img:
            mode = img.mode
        load_rgb(path, draft_size=256, max_pixels=max_pixels)
    except UnidentifiedImageError:
        return {"problem": "not an image Pillow can read", "mode": None}
    except Image.DecompressionBombError as e:
        return {"problem": f"too large (decompression bomb guard): {e}", "mode": None}
    except (OSError, ValueError, SyntaxError) as e:
        return {"problem": f"unreadable or truncated image: {e}", "mode": None}
    return {"problem": None, "mode": mode}


def _verdicts(samples: list[Sample], max_pixels: int, pool, bar, memo) -> list[dict]:
    """Decode verdicts in `samples` order: remembered ones from `memo` (keyed by content
    digest), the others decoded now and remembered."""
    namespace = f"audit-v1-{max_pixels}"
    known = memo.get_many(namespace, [s.digest for s in samples]) if memo is not None else {}
    todo = [s for s in samples if s.digest not in known]
    bar.update(len(samples) - len(todo))
    fresh = {}
    for s, verdict in zip(
        todo, pool.map(lambda s: _decode_check(s.path, max_pixels), todo), strict=True
    ):
        fresh[s.digest] = verdict
        bar.update()
    if memo is not None:
        memo.put_many(namespace, fresh)
    return [known.get(s.digest) or fresh[s.digest] for s in samples]


def _drop_duplicates(
    samples: list[Sample],
) -> tuple[list[Sample], list[tuple[str, str]], dict[str, dict[str, int]]]:
    """Keep one copy of byte-identical files (the one of the earliest split: train, val, test);
    drop every copy when the copies disagree on label. Also returns the leakage counts:
    {split: {earlier split: copies left out of split because that earlier split had them}}."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: (_SPLIT_ORDER[s.split], str(s.path))):
        groups[s.digest].append(s)
    kept, problems = [], []
    leakage: dict[str, Counter] = defaultdict(Counter)
    for group in groups.values():
        labels = sorted({s.label for s in group})
        conflict = len(labels) > 1
        first = group[0].split or "train"
        for s in group[0 if conflict else 1 :]:
            here = s.split or "train"
            if _SPLIT_ORDER[here] > _SPLIT_ORDER[first]:
                leakage[here][first] += 1
        if conflict:
            names = ", ".join(labels)
            problems += [(str(s.path), f"same image under classes {names}") for s in group]
            continue
        kept.append(group[0])
        problems += [(str(s.path), f"duplicate of {group[0].path}") for s in group[1:]]
    counts = {
        k: dict(sorted(v.items(), key=lambda kv: _SPLIT_ORDER[kv[0]])) for k, v in leakage.items()
    }
    return sorted(kept, key=lambda s: str(s.path)), problems, counts


def leakage_messages(leakage: dict) -> list[str]:
    """One sentence per (split, earlier split) pair of `AuditReport.leakage`."""
    out = []
    for split_name in ("val", "test"):
        for earlier, n in (leakage.get(split_name) or {}).items():
            noun, other = _SPLIT_NOUN[split_name], _SPLIT_NOUN[earlier]
            were = "image was" if n == 1 else "images were"
            out.append(
                f"{n} {noun} {were} byte-identical to {other} images and "
                f"{'was' if n == 1 else 'were'} left out of the {noun} set"
            )
    return out


def audit(
    manifest: Manifest,
    console: Console | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    memo: Memo | None = None,
) -> AuditReport:
    """Open every file once; list and leave out what is unusable; stop if < 2 classes remain.

    With a `memo`, files whose content (digest) was checked by an earlier run are not decoded
    again: their verdict is remembered.
    """
    console = console or Console(quiet=True)
    for message in manifest.layout.get("messages", []):
        (console.warn if message["level"] == "warning" else console.note)(message["text"])
    problems = list(manifest.problems)
    good, conversions = [], Counter()
    workers = workers or min(8, (os.cpu_count() or 1) + 1)
    with console.progress("audit", len(manifest.samples)) as bar:
        with ThreadPoolExecutor(workers) as pool:
            hashed = []
            for sample, problem in pool.map(_hash_file, manifest.samples):
                if problem:
                    problems.append((str(sample.path), problem))
                    bar.update()
                else:
                    hashed.append(sample)
            for sample, verdict in zip(
                hashed, _verdicts(hashed, max_pixels, pool, bar, memo), strict=True
            ):
                if verdict["problem"]:
                    problems.append((str(sample.path), verdict["problem"]))
                else:
                    good.append(sample)
                    if verdict["mode"] and verdict["mode"] != "RGB":
                        conversions[f"{verdict['mode']}->RGB"] += 1
    order = {str(s.path): i for i, s in enumerate(manifest.samples)}
    first = len(manifest.problems)  # keep per-file problems in scan order
    problems[first:] = sorted(problems[first:], key=lambda p: order.get(p[0], -1))
    good, dup_problems, leakage = _drop_duplicates(good)
    problems += dup_problems
    if strict and problems:
        path, reason = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{path}: {reason}{more}; fix or remove it, or run without --strict")
    for path, reason in problems:
        console.warn(f"skipped {path}: {reason}")
    for message in leakage_messages(leakage):
        console.warn(f"leakage: {message}")
    counts = Counter(s.label for s in good)
    left_out = [c for c in manifest.classes_seen if counts[c] == 0]
    for c in left_out:
        msg = f"class '{c}' has no usable images and is LEFT OUT of training"
        if strict:
            raise DataError(f"{msg}; add images to it or remove the folder")
        console.warn("!" * 8 + " " + msg + " " + "!" * 8)
    classes = sorted(c for c in counts)
    if len(classes) < 2:
        raise DataError(
            f"need at least 2 classes with usable images, found {len(classes)} "
            f"({', '.join(classes) or 'none'}) in '{manifest.root}'; add a folder per class"
        )
    return AuditReport(
        good,
        classes,
        problems,
        dict(conversions),
        left_out,
        len(manifest.samples),
        manifest.layout,
        leakage,
    )


def split(
    samples: list[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Return (train, val, test). A `val/` folder wins; otherwise a stratified, seeded
    `val_fraction` of each class of the training images. A `test/` folder is returned apart,
    never used as validation: it is for one final evaluation only."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.2)")
    by_split = defaultdict(list)
    for s in samples:
        by_split[s.split].append(s)
    test = by_split["test"]
    if by_split["val"]:
        return by_split["train"] + by_split[None], by_split["val"], test
    rng = np.random.default_rng(seed)
    by_label = defaultdict(list)
    for s in by_split["train"] + by_split[None]:
        by_label[s.label].append(s)
    train, val = [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda s: str(s.path))
        order = rng.permutation(len(group))
        n_val = min(max(1, round(len(group) * val_fraction)), len(group) - 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val, test


def split_summary(
    report: AuditReport,
    parts: tuple[list[Sample], list[Sample], list[Sample]],
    val_fraction: float,
    seed: int,
) -> dict:
    """What each split holds and did, for metrics.json, the CLI summary and the report."""
    train, val, test = parts
    from_folder = any(s.split == "val" for s in val)
    source = (
        "the validation folder"
        if from_folder
        else f"carved from the training images ({val_fraction:.0%} of each class, seed {seed})"
    )
    return {
        "train": len(train),
        "validation": len(val),
        "test": len(test),
        "validation_source": source,
        "model_chosen_on": "validation",
        "test_use": "one final evaluation, never used to choose anything" if test else None,
        "leakage": report.leakage,
        "leakage_messages": leakage_messages(report.leakage),
    }

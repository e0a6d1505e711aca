"""Scan a labelled image folder or CSV, audit every file, split train/validation.

scan -> manifest of (path, label, split); audit -> usable samples + listed problems;
split -> stratified, seeded, a user-given validation folder wins.
"""

from __future__ import annotations

import csv
import hashlib
import os
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

__all__ = ["Sample", "Manifest", "AuditReport", "scan", "audit", "split"]

_SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SPLIT_ORDER = {"train": 0, None: 0, "val": 1, "test": 2}


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


@dataclass
class AuditReport:
    """Usable samples, the files left out with their reason, and conversions applied."""

    samples: list[Sample]
    classes: list[str]
    problems: list[tuple[str, str]]
    conversions: dict[str, int]
    left_out_classes: list[str]
    scanned: int

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
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir()
        and not _hidden(p.name)
        and p.resolve() not in exclude
        and not here.is_relative_to(p.resolve())
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


def scan(path: str | os.PathLike, exclude: tuple[str | os.PathLike, ...] = ()) -> Manifest:
    """Find labelled images: DIR/<class>/*, DIR/{train,val,test}/<class>/* or a path,label CSV."""
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
        return _scan_csv(path)
    skip = frozenset(Path(p).resolve() for p in exclude)  # e.g. a run folder inside the data
    subdirs = {p.name.lower(): p for p in _class_dirs(path, skip)}
    samples, classes = [], set()
    if "train" in subdirs:
        for name, split_name in _SPLIT_DIRS.items():
            if name in subdirs:
                s, c = _scan_class_tree(subdirs[name], split_name, skip)
                samples += s
                classes.update(c)
    else:
        samples, found = _scan_class_tree(path, None, skip)
        classes.update(found)
    if not classes:
        raise DataError(
            f"no class folders in '{path}'; expected '{path}/<class name>/<image files>'"
        )
    return Manifest(path.resolve(), samples, sorted(classes))


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


def _drop_duplicates(samples: list[Sample]) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Keep one copy of byte-identical files; drop every copy when the copies disagree on label."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: (_SPLIT_ORDER[s.split], str(s.path))):
        groups[s.digest].append(s)
    kept, problems = [], []
    for group in groups.values():
        labels = sorted({s.label for s in group})
        if len(labels) > 1:
            names = ", ".join(labels)
            problems += [(str(s.path), f"same image under classes {names}") for s in group]
            continue
        kept.append(group[0])
        problems += [(str(s.path), f"duplicate of {group[0].path}") for s in group[1:]]
    return sorted(kept, key=lambda s: str(s.path)), problems


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
    good, dup_problems = _drop_duplicates(good)
    problems += dup_problems
    if strict and problems:
        path, reason = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{path}: {reason}{more}; fix or remove it, or run without --strict")
    for path, reason in problems:
        console.warn(f"skipped {path}: {reason}")
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
    return AuditReport(good, classes, problems, dict(conversions), left_out, len(manifest.samples))


def split(
    samples: list[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Return (train, val, test). A `val/` folder wins; a `test/` folder alone serves as
    validation; otherwise a stratified, seeded split of `val_fraction` per class."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.2)")
    by_split = defaultdict(list)
    for s in samples:
        by_split[s.split].append(s)
    if by_split["val"]:
        return by_split["train"], by_split["val"], by_split["test"]
    if by_split["test"]:
        return by_split["train"], by_split["test"], []
    rng = np.random.default_rng(seed)
    by_label = defaultdict(list)
    for s in samples:
        by_label[s.label].append(s)
    train, val = [], []
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        n_val = min(max(1, round(len(group) * val_fraction)), len(group) - 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val, []

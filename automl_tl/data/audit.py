"""Scan a labelled image folder or CSV, audit every file, split train/validation.

scan -> manifest of (path, label, split) plus how the folder layout was read; audit -> usable
samples + listed problems + files that leaked across splits; split -> a user-given validation
folder wins, else validation is carved (stratified, seeded) out of the training images, and a
test folder is always kept apart for one final evaluation.
"""

from __future__ import annotations

import hashlib
import stat
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from ..core.console import Console
from ..core.errors import DataError
from ..core.machine import cpu_count
from .files import Sample
from .preprocess import DEFAULT_MAX_PIXELS, load_rgb
from .scan import Manifest

if TYPE_CHECKING:  # the memo is handed in (features.memo); data never opens one
    from ..features.memo import Memo

__all__ = ["AuditReport", "audit"]

_SPLIT_ORDER = {"train": 0, None: 0, "val": 1, "test": 2}
_SPLIT_NOUN = {"train": "training", None: "training", "val": "validation", "test": "test"}


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
    workers = workers or min(8, cpu_count() + 1)
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

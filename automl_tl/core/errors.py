"""Exception types. The CLI prints an AutoTLError as one line and exits non-zero."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

__all__ = [
    "AutoTLError",
    "DataError",
    "BackboneError",
    "NotFittedError",
    "ExportError",
    "OutputError",
    "DiskFullError",
    "is_disk_full",
    "CACHE_FULL_FIX",
    "cache_full_warning",
    "size_text",
    "Interrupted",
]


class AutoTLError(Exception):
    """Base class: a problem the user can fix; the message names the value and the fix."""


class DataError(AutoTLError):
    """The input data cannot be used as given."""


class BackboneError(AutoTLError):
    """A backbone is unknown or its weights cannot be found."""


class NotFittedError(AutoTLError, AttributeError):
    """An estimator method needs `fit` to have run first."""


class ExportError(AutoTLError):
    """The exported model does not reproduce the torch model."""


class OutputError(AutoTLError):
    """The output folder cannot be created or written."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a step of a fit: `message` says what was running, what of it is kept and
    how to continue."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class DiskFullError(OutputError):
    """A file could not be written because its filesystem is full (or a quota is used up).

    Attributes: `path` (the file), `needed` (bytes it needs, None when unknown), `free`."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None, fix: str = ""):
        self.path, self.needed = Path(path), needed
        self.free = _free_bytes(self.path)
        need = f"needs {size_text(needed)}" if needed else "needs more space"
        free = f", {size_text(self.free)} free there" if self.free is not None else ""
        fix = fix or "free some space on that filesystem or write to another folder"
        super().__init__(f"no space left on device writing '{self.path}' ({need}{free}); {fix}")


CACHE_FULL_FIX = (
    "free some space there, or pass --cache-dir / set AUTOML_TL_CACHE_DIR to another filesystem"
)


def cache_full_warning(error: DiskFullError) -> str:
    """The one warning of a run whose feature cache is full (the run itself goes on)."""
    return f"feature cache full, this run goes on without caching (kept in memory): {error}"


def is_disk_full(exc: BaseException) -> bool:
    """True for the errors a full filesystem raises: ENOSPC/EDQUOT, SQLite's SQLITE_FULL."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    # SQLITE_FULL; SQLITE_IOERR_SHMSIZE: the WAL index of an existing database cannot be
    # allocated (what reopening a cache on a full disk answers). sqlite3 is not imported here.
    return getattr(exc, "sqlite_errorcode", None) in (13, 4874)


def size_text(n: int | None) -> str:
    """Bytes for people: 512 B, 3.4 kB, 12.0 MB, 1.50 GB."""
    if n is None:
        return "?"
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if n < scale * 1000 or unit == "GB":
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n} B"  # pragma: no cover


def _free_bytes(path: Path) -> int | None:
    """Space available to this user on the filesystem holding `path` (its nearest existing
    parent), None when it cannot be read."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None

"""Files written so that no reader ever sees half of one: a temporary file beside the target,
then one rename. Every room writes through `write_atomic` (or `publish` for a temporary file it
wrote itself); a full disk becomes a DiskFullError naming the file and the space it needs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import DiskFullError, OutputError, is_disk_full

__all__ = [
    "publish",
    "temporary_beside",
    "write_atomic",
    "write_json_atomic",
    "file_sha256",
    "RUN_FULL_FIX",
]

# The advice of a full disk under a run folder (its files, checkpoints).
RUN_FULL_FIX = "free some space there or pass --out to a folder on another filesystem"


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give a finished temporary file normal permissions and rename it over `target` (atomic)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


@contextlib.contextmanager
def temporary_beside(target: str | os.PathLike, fix: str = ""):
    """A new empty temporary file in `target`'s folder (so a rename onto `target` is atomic),
    removed when the block ends unless it was published. A full disk raises DiskFullError."""
    target = Path(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(target, None, fix) from None
        raise OutputError(f"cannot write '{target}': {e.strerror or e}") from None
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_atomic(
    target: str | os.PathLike, data: bytes, fsync: bool = False, fix: str = ""
) -> Path:
    """Write `data` to a temporary file beside `target` and rename it over `target`, so a
    reader never sees half a file; on failure the temporary file is removed. A full disk
    raises DiskFullError (path and size needed, `fix` as the advice), other errors OutputError."""
    target = Path(target)
    with temporary_beside(target, fix) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
            publish(tmp, target)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(target, len(data), fix) from None
            raise OutputError(f"cannot write '{target}': {e.strerror or e}") from None
    return target


def write_json_atomic(target: str | os.PathLike, obj, fix: str = "", indent: int | None = None):
    """`obj` as JSON (UTF-8), written with `write_atomic`."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + ("\n" if indent else "")
    return write_atomic(target, text.encode("utf-8"), fix=fix)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$AUTOML_TL_CACHE_DIR, else $XDG_CACHE_HOME/automl-tl, else ~/.cache/automl-tl."""
    if os.environ.get("AUTOML_TL_CACHE_DIR"):
        return Path(os.environ["AUTOML_TL_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "automl-tl"

"""The feature cache's storage: shard files, the SQLite index, fsync and an advisory lock.

A shard is immutable once renamed to its final name:
    bytes 0-63     header: magic b"ATLFEAT\\0", format (u32), dtype code (u32: 1 fp16, 2 int8),
                   rows (u64), width (u64), scales offset (u64, 0 for fp16); little-endian, 0-padded
    64 ...         values, (rows, width) float16 or int8, row-major
    scales offset  int8 only: one float32 scale per row, at a 64-byte aligned offset
Its size and blake2b-128 of the whole file are kept in the index and checked on first use.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..core.errors import CACHE_FULL_FIX, AutoTLError, DiskFullError, is_disk_full

T = TypeVar("T")

__all__ = [
    "while_locked",
    "BadShard",
    "CacheError",
    "CacheMissError",
    "DELETE_SHARD_ENTRIES",
    "DTYPES",
    "FORMAT",
    "fsync_dir",
    "flock",
    "is_shard_name",
    "layout",
    "map_shard",
    "open_index",
    "shard_path",
    "transaction",
    "write_shard",
]

FORMAT = 1
DTYPES: dict[str, tuple[int, Any]] = {"fp16": (1, np.float16), "int8": (2, np.int8)}
_MAGIC = b"ATLFEAT\x00"
_HEADER = struct.Struct("<8sIIQQQ")  # magic, format, dtype code, rows, width, scales offset
_HEADER_SIZE = 64
_SHARD_NAME = re.compile(r"[0-9a-f]{32}\.shard")  # uuid4().hex + ".shard", what put() writes
_TIMEOUT = 120.0  # seconds a process waits for another one's write transaction

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS spaces(id TEXT PRIMARY KEY, dtype TEXT NOT NULL,
    description TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shards(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    space TEXT NOT NULL, stage TEXT NOT NULL, dtype TEXT NOT NULL, width INTEGER NOT NULL,
    rows INTEGER NOT NULL, nbytes INTEGER NOT NULL, checksum TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS shards_by_stage ON shards(space, stage);
CREATE TABLE IF NOT EXISTS entries(space TEXT NOT NULL, stage TEXT NOT NULL, digest TEXT NOT NULL,
    shard INTEGER NOT NULL, row INTEGER NOT NULL, PRIMARY KEY(space, stage, digest)) WITHOUT ROWID;
PRAGMA user_version = {FORMAT}
"""
# (space, stage) first so the primary key narrows the scan; no index on entries.shard
DELETE_SHARD_ENTRIES = (
    "DELETE FROM entries WHERE (space, stage) = (SELECT space, stage FROM shards WHERE id = ?) "
    "AND shard = ?"
)


class CacheError(AutoTLError):
    """The feature cache cannot be used as asked."""


class CacheMissError(CacheError, KeyError):
    """Requested rows are not in the feature cache."""

    __str__ = Exception.__str__  # KeyError would quote the message


class BadShard(Exception):
    """A shard file is missing or does not match its index row (the message says how)."""


def is_shard_name(name: object) -> bool:
    """True for a shard file name the store writes (no folder part, no other file)."""
    return isinstance(name, str) and _SHARD_NAME.fullmatch(name) is not None


def shard_path(folder: Path, name: object) -> Path:
    """`folder / name` for a shard name the store writes; BadShard for any other, so an index
    planted or damaged never makes the store read or delete a file outside `folder`."""
    if not is_shard_name(name):
        raise BadShard(f"{name!r} is not a shard file name")
    return folder / name


def layout(dtype: str, rows: int, width: int) -> tuple[int, int]:
    """(offset of the scales or 0, file size) of a shard."""
    end = _HEADER_SIZE + rows * width * np.dtype(DTYPES[dtype][1]).itemsize
    if dtype != "int8":
        return 0, end
    offset = (end + 63) // 64 * 64
    return offset, offset + 4 * rows


def write_shard(
    path: Path, dtype: str, values: np.ndarray, scales: np.ndarray | None
) -> tuple[int, str]:
    """Write, flush and fsync a new shard file (never overwrites); returns (size, checksum)."""
    rows, width = values.shape
    offset, size = layout(dtype, rows, width)
    header = _HEADER.pack(_MAGIC, FORMAT, DTYPES[dtype][0], rows, width, offset)
    parts = [header.ljust(_HEADER_SIZE, b"\0"), np.ascontiguousarray(values).view(np.uint8)]
    if scales is not None:
        pad = bytes(offset - _HEADER_SIZE - values.nbytes)
        parts += [pad, np.ascontiguousarray(scales, dtype="<f4").view(np.uint8)]
    h = hashlib.blake2b(digest_size=16)
    with open(path, "xb") as f:
        for part in parts:
            h.update(part)
            f.write(part)
        f.flush()
        os.fsync(f.fileno())
    return size, h.hexdigest()


def map_shard(
    path: Path, dtype: str, rows: int, width: int, nbytes: int, checksum: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Memory-map a shard as (values, scales) after checking its size, header and, unless
    `checksum` is None, its checksum. Raises BadShard."""
    try:
        size = path.stat().st_size
        if size != nbytes:
            raise BadShard(f"{size} bytes, the index says {nbytes}")
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise BadShard(e.strerror or str(e)) from None
    offset, _ = layout(dtype, rows, width)
    if _HEADER.unpack_from(mm) != (_MAGIC, FORMAT, DTYPES[dtype][0], rows, width, offset):
        raise BadShard("header does not match the index")
    if checksum is not None and hashlib.blake2b(mm, digest_size=16).hexdigest() != checksum:
        raise BadShard("checksum mismatch")
    itemsize = np.dtype(DTYPES[dtype][1]).itemsize
    values = mm[_HEADER_SIZE : _HEADER_SIZE + rows * width * itemsize].view(DTYPES[dtype][1])
    scales = mm[offset : offset + 4 * rows].view("<f4") if offset else None
    return values.reshape(rows, width), scales


def fsync_dir(path: Path) -> None:
    """Make renames and deletions inside `path` durable (POSIX; a no-op elsewhere)."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def flock(path: Path, exclusive: bool) -> Iterator[None]:
    """Advisory lock on `path`, released by the kernel even on SIGKILL; a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------ the index
@contextmanager
def transaction(db: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """One SQLite transaction: committed when the block ends, rolled back on any exception."""
    db.execute(f"BEGIN {mode}")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def while_locked(setup: Callable[[], T], timeout: float = _TIMEOUT) -> T:
    """`setup()`, tried again while SQLite answers "database is locked": another process is
    creating or converting the same database (its first open takes an exclusive lock that
    the busy timeout does not wait for), e.g. two ranks under torchrun on a fresh cache."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return setup()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or is_disk_full(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def open_index(folder: Path) -> sqlite3.Connection:
    """The index of the cache in `folder` (created when absent): WAL, waits for other writers."""
    try:
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            folder / "index.sqlite", timeout=_TIMEOUT, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
    except (OSError, sqlite3.Error) as e:
        if is_disk_full(e):
            raise DiskFullError(folder / "index.sqlite", None, CACHE_FULL_FIX) from None
        raise CacheError(
            f"cannot open the feature cache at {folder}: {e}; "
            "pass --cache-dir or set AUTOML_TL_CACHE_DIR to a writable folder"
        ) from None
    try:
        return while_locked(lambda: _setup(db, folder))
    except sqlite3.OperationalError as e:
        if is_disk_full(e):
            db.close()
            raise DiskFullError(folder / "index.sqlite", None, CACHE_FULL_FIX) from None
        raise CacheError(f"cannot open the index of {folder}: {e}") from None
    except sqlite3.DatabaseError as e:
        raise CacheError(
            f"the feature cache index {folder / 'index.sqlite'} is unreadable ({e}); "
            f"delete the folder {folder} (only cached features are lost)"
        ) from None


def _setup(db: sqlite3.Connection, folder: Path) -> sqlite3.Connection:
    db.execute(f"PRAGMA busy_timeout = {int(_TIMEOUT * 1000)}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        with transaction(db):  # re-checked inside: a concurrent first open may have won
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA.split(";"):
                    db.execute(statement)
    elif version != FORMAT:
        raise CacheError(
            f"the feature cache at {folder} has format {version}, this automl-tl reads "
            f"format {FORMAT}; delete that folder (only cached features are lost) or pass "
            "another --cache-dir"
        )
    try:
        db.execute("SELECT json_array_length('[]')")
    except sqlite3.OperationalError:
        raise CacheError(
            f"this Python's SQLite {sqlite3.sqlite_version} lacks JSON functions, which the "
            "feature cache needs; use a Python built with SQLite 3.38 or newer"
        ) from None
    return db

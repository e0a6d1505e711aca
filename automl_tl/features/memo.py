"""Small JSON facts remembered between runs, keyed by content: which files decoded cleanly
(the audit verdict of a digest) and aggregates of the analysis (BatchNorm drift of a subset).

One SQLite file beside the feature store. Values are JSON, never pickle. A value is written in
the same transaction as its key, so a killed process leaves either the whole fact or none. A file
that is not a memo (damaged, or replaced by something else) is started afresh with a warning:
everything in it is recomputed when next needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from ..core.console import Console
from ..core.errors import (
    CACHE_FULL_FIX,
    AutoTLError,
    DiskFullError,
    cache_full_warning,
    is_disk_full,
)
from .store_format import while_locked

__all__ = ["Memo", "content_key"]


def content_key(parts: list) -> str:
    """A memo key for what a measurement depends on: `parts` (plain JSON values: feature
    spaces, view names, image digests, labels, seeds) hashed."""
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS memo (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"""


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        try:
            db.execute("SELECT namespace, key, value FROM memo LIMIT 0")
        except sqlite3.OperationalError as e:  # a SQLite file, but not ours
            raise sqlite3.DatabaseError(f"no memo table: {e}") from None
    except BaseException:
        db.close()
        raise
    return db


class Memo:
    """Namespaced key -> JSON value store in `<cache dir>/memo.sqlite`."""

    def __init__(self, root: str | os.PathLike, console: Console | None = None):
        self.path = Path(root) / "memo.sqlite"
        self._console = console or Console()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = while_locked(lambda: _connect(self.path))
        except sqlite3.OperationalError as e:  # unwritable, or locked for minutes: not content
            if is_disk_full(e):  # facts are only worth keeping: this run remembers them alone
                self._full()
                self._db = _connect(Path(":memory:"))
                return
            raise AutoTLError(
                f"cannot open {self.path} ({e}); pass --cache-dir or set AUTOML_TL_CACHE_DIR "
                "to a writable folder"
            ) from None
        except sqlite3.DatabaseError as e:
            Console().warn(f"{self.path} is not a readable memo ({e}); starting a new one")
            for suffix in ("", "-wal", "-shm"):  # a stale WAL must not replay into the new file
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = _connect(self.path)

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, object]:
        """The stored values of those `keys` that are known."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, object] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, value FROM memo WHERE namespace = ? AND key IN ({marks})",
                [namespace, *chunk],
            )
            for key, value in rows:
                try:
                    out[key] = json.loads(value)
                except ValueError:  # written by something else: treat as unknown
                    continue
        return out

    def get(self, namespace: str, key: str) -> object | None:
        return self.get_many(namespace, [key]).get(key)

    def put_many(self, namespace: str, items: dict[str, object]) -> None:
        """Store all `items` in one transaction (replacing older values)."""
        if not items:
            return
        rows = [(namespace, k, json.dumps(v, sort_keys=True)) for k, v in items.items()]
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?, ?)", rows)
        except sqlite3.Error as e:
            if not is_disk_full(e):
                raise
            self._full()  # rolled back: nothing half-written; recomputed when next needed

    def _full(self) -> None:
        error = DiskFullError(self.path, None, CACHE_FULL_FIX)
        self._console.warn_once(("cache-full", str(self.path.parent)), cache_full_warning(error))

    def put(self, namespace: str, key: str, value: object) -> None:
        self.put_many(namespace, {key: value})

    def counts(self) -> dict[str, int]:
        """Number of facts per namespace."""
        rows = self._db.execute("SELECT namespace, COUNT(*) FROM memo GROUP BY namespace")
        return dict(rows.fetchall())

    def clear(self) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM memo")

    def close(self) -> None:
        self._db.close()

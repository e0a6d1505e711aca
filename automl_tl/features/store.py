"""Feature cache: pooled backbone features, content-addressed, crash-safe, shared by processes.

Under ``<root>/features/``: ``index.sqlite`` (WAL; tables spaces, shards, entries keyed by
space, stage and image digest), ``shards/<uuid>.shard`` (immutable, one per put and stage; format
in store_format.py; ``<uuid>.tmp`` while written) and ``lock`` (writers share it, verify and clear
take it alone, so they never delete a file a live put is about to index).

Crash safety: a put writes every shard under a temporary name, fsyncs it, renames it to its final
name, fsyncs the folder and only then inserts the shard rows and their entries in ONE SQLite
transaction (synchronous=FULL). A process killed at any point leaves at worst a temporary or an
unindexed shard file (reported and deleted by ``verify(repair=True)``), never an entry that reads
back wrong. Damaged shards (size, header or checksum wrong; checked the first time a process maps
a shard) heal themselves: their entries are dropped from the index with a warning, `missing` then
reports those rows so the caller recomputes them, and `get` raises CacheMissError for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.console import Console
from ..core.errors import CACHE_FULL_FIX, DiskFullError, is_disk_full
from ..core.files import default_cache_dir
from .rows import StoredRows
from .store_admin import StoreMaintenance
from .store_format import (
    DELETE_SHARD_ENTRIES,
    DTYPES,
    BadShard,
    CacheError,
    CacheMissError,
    flock,
    fsync_dir,
    is_shard_name,
    layout,
    map_shard,
    open_index,
    shard_path,
    transaction,
    write_shard,
)

if TYPE_CHECKING:  # torch loads lazily: `automl-tl cache info` must not pay for it
    import torch

__all__ = [
    "CacheError",
    "CacheMissError",
    "FeatureStore",
]

_MAX_MAPS = 256  # memory-mapped shards kept open per process
_INHERITED: list[sqlite3.Connection] = []  # connections inherited through fork: never closed


def _digest_list(digests: Sequence[str]) -> list[str]:
    out = list(digests)
    if not all(isinstance(d, str) and d for d in out):
        bad = next(d for d in out if not isinstance(d, str) or not d)
        raise CacheError(f"image digests must be non-empty strings, got {bad!r}")
    return out


def _as_rows(stage: str, x: Any, n: int):
    import torch

    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] != n or t.shape[1] == 0:
        raise CacheError(
            f"stage {stage!r}: expected a ({n}, D) feature array for {n} digests, "
            f"got shape {tuple(t.shape)}"
        )
    return t.detach().to("cpu", torch.float32).contiguous()


def _check_range(stage: str, rows: torch.Tensor, limit: float) -> None:
    low, high = (float(v) for v in rows.aminmax())  # NaN propagates into both
    if not (-limit <= low and high <= limit):
        bad = int((~(rows.abs() <= limit)).any(dim=1).sum())
        raise CacheError(
            f"stage {stage!r}: {bad} rows hold NaN/inf or values beyond +-{limit:g}; "
            "the features are broken upstream, nothing was stored"
        )


# ------------------------------------------------------------------ the store
class FeatureStore(StoreMaintenance):
    """Content-addressed feature store under `root`/features (default: default_cache_dir())."""

    def __init__(self, root: str | Path | None = None, *, console: Console | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.dir = self.root / "features"
        self.shard_dir = self.dir / "shards"
        self._console = console or Console()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.RLock()
        self._spaces: dict[str, tuple[str, str]] = {}  # id -> (description JSON, dtype)
        self._verified: set[str] = set()  # shard names whose checksum this process checked
        self._maps: OrderedDict[str, tuple] = OrderedDict()
        self._records: dict[int, tuple] = {}  # shard id -> (name, dtype, rows, width, ...)

    # ---------------------------------------------------------------- connection
    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            if self._conn is not None:  # inherited through fork: closing it could hurt the parent
                _INHERITED.append(self._conn)
            self._conn, self._pid = open_index(self.dir), os.getpid()
        return self._conn

    def close(self) -> None:
        """Close the index connection and unmap shards (reopened on next use). Close stores
        before os.fork(): SQLite state must not cross a fork."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._maps.clear()

    # ---------------------------------------------------------------- spaces
    def space_id(self, description: dict, dtype: str = "fp16", register: bool = True) -> str:
        """Stable id of a feature space (backbone, weights, preprocessing, ...) and storage dtype;
        registers the description so `info` can show it (unless `register` is False)."""
        if dtype not in DTYPES:
            raise CacheError(f"unknown feature storage dtype {dtype!r}; use 'fp16' or 'int8'")
        if not isinstance(description, dict) or not description:
            raise CacheError(
                f"a feature space description must be a non-empty dict: {description!r}"
            )
        try:
            text = json.dumps(
                description, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                allow_nan=False,
            )  # fmt: skip
        except (TypeError, ValueError) as e:
            raise CacheError(
                f"feature space description is not plain JSON ({e}); use strings, numbers, "
                "booleans, None, lists and dicts with string keys"
            ) from None
        key = json.dumps([text, dtype], separators=(",", ":")).encode()
        sid = hashlib.blake2b(key, digest_size=10).hexdigest()
        if sid in self._spaces or not register:  # registered by this object already
            return sid
        try:
            with self._lock, transaction(self._db()) as db:
                db.execute(
                    "INSERT OR IGNORE INTO spaces VALUES (?, ?, ?, ?)",
                    (sid, dtype, text, time.time()),
                )
        except sqlite3.Error as e:
            if is_disk_full(e):
                raise DiskFullError(self.dir / "index.sqlite", None, CACHE_FULL_FIX) from None
            raise
        self._spaces[sid] = (text, dtype)  # only once registered: put() relies on it
        return sid

    def _space(self, space: str) -> tuple[str, str] | None:
        if space not in self._spaces:
            row = (
                self._db()
                .execute("SELECT description, dtype FROM spaces WHERE id = ?", (space,))
                .fetchone()
            )
            if row is None:
                return None
            self._spaces[space] = (row[0], row[1])
        return self._spaces[space]

    # ---------------------------------------------------------------- reads
    def _lookup(self, space: str, stage: str, digests: list[str]):
        """(positions, shard ids, rows) of the stored digests, and {shard id: record}."""
        with self._lock, transaction(self._db(), "DEFERRED") as db:
            found = db.execute(  # CROSS JOIN: one primary-key search per requested digest
                "SELECT j.key, e.shard, e.row FROM json_each(?) AS j CROSS JOIN entries AS e "
                "ON e.space = ? AND e.stage = ? AND e.digest = j.value",
                (json.dumps(digests), space, stage),
            ).fetchall()
            found = np.array(found, dtype=np.int64).reshape(-1, 3)
            ids = np.unique(found[:, 1]).tolist()
            new = [i for i in ids if i not in self._records]  # records never change once written
            for k in range(0, len(new), 500):
                chunk = new[k : k + 500]
                self._records.update(
                    (r[0], r[1:])
                    for r in db.execute(
                        "SELECT id, name, dtype, rows, width, nbytes, checksum FROM shards "
                        f"WHERE id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    )
                )
        records = {i: self._records[i] for i in ids if i in self._records}
        return found[:, 0], found[:, 1], found[:, 2], records

    def _views(self, sid: int, rec: tuple):
        """The mapped (values, scales) of a shard, or None after dropping a damaged one."""
        name = rec[0]
        if name in self._maps:
            self._maps.move_to_end(name)
            return self._maps[name]
        try:
            checksum = None if name in self._verified else rec[5]
            views = map_shard(shard_path(self.shard_dir, name), *rec[1:5], checksum)
        except BadShard as e:
            self._drop_shard(sid, name, str(e))
            return None
        self._verified.add(name)
        self._maps[name] = views
        while len(self._maps) > _MAX_MAPS:
            self._maps.popitem(last=False)
        return views

    def _drop_shard(self, sid: int, name: str, reason: str) -> None:
        with self._lock, transaction(self._db()) as db:
            n = db.execute(DELETE_SHARD_ENTRIES, (sid, sid)).rowcount
            db.execute("DELETE FROM shards WHERE id = ?", (sid,))
        if is_shard_name(name):  # never delete outside the shard folder
            (self.shard_dir / name).unlink(missing_ok=True)
        if n:  # n == 0: another process dropped or cleared it first
            self._console.warn(
                f"feature cache shard {self.shard_dir / name} is damaged ({reason}); "
                f"dropped its {n} rows from the index, they will be recomputed"
            )

    def _groups(self, space: str, stage: str, digests: list[str]):
        """Yield (positions, rows, (values, scales)) per healthy shard holding requested rows."""
        pos, sids, rows, shards = self._lookup(space, stage, digests)
        order = np.argsort(sids, kind="stable")
        pos, sids, rows = pos[order], sids[order], rows[order]
        cuts = np.flatnonzero(np.diff(sids)) + 1
        for p, s, r in zip(
            np.split(pos, cuts), np.split(sids, cuts), np.split(rows, cuts), strict=True
        ):
            if len(p) and int(s[0]) in shards:
                with self._lock:  # threads share the map cache
                    views = self._views(int(s[0]), shards[int(s[0])])
                if views is not None:
                    inside = r < views[0].shape[0]  # verify() reports entries outside
                    yield p[inside], r[inside], views

    def missing(self, space: str, stage: str, digests: Sequence[str]) -> list[int]:
        """Positions in `digests` with no healthy stored row for (space, stage)."""
        return np.flatnonzero(~self._have(space, stage, _digest_list(digests))).tolist()

    def _have(self, space: str, stage: str, digests: list[str]) -> np.ndarray:
        have = np.zeros(len(digests), dtype=bool)
        for p, _, _ in self._groups(space, stage, digests):
            have[p] = True
        return have

    def get(self, space: str, stage: str, digests: Sequence[str]) -> StoredRows:
        """Stored rows of `digests` in their order; CacheMissError if any is missing."""
        import torch

        digests = _digest_list(digests)
        n = len(digests)
        have = np.zeros(n, dtype=bool)
        values = scales = None
        for p, r, (v, s) in self._groups(space, stage, digests):
            if values is None:
                values = np.empty((n, v.shape[1]), dtype=v.dtype)
                scales = np.empty(n, dtype=np.float32) if s is not None else None
            if v.shape[1] != values.shape[1]:
                raise CacheError(
                    f"stage {stage!r} of feature space {space} holds rows of different widths; "
                    "run `automl-tl cache clear --space " + space + " --yes`"
                )
            values[p] = v[r]
            if scales is not None:
                scales[p] = s[r]
            have[p] = True
        if not have.all():
            raise CacheMissError(
                f"{n - int(have.sum())} of {n} requested rows of stage {stage!r} are not in the "
                f"feature cache (space {space}); compute and put them first (see missing())"
            )
        if values is None:  # nothing requested
            int8 = (self._space(space) or ("", "fp16"))[1] == "int8"
            values = np.empty((0, 0), dtype=np.int8 if int8 else np.float16)
            scales = np.empty(0, dtype=np.float32) if int8 else None
        return StoredRows(
            torch.from_numpy(values), torch.from_numpy(scales) if scales is not None else None
        )

    # ---------------------------------------------------------------- writes
    def put(self, space: str, digests: Sequence[str], stages: dict[str, Any]) -> dict[str, int]:
        """Store float32 (N, D_stage) rows of several stages for `digests`; rows already stored
        are skipped. Returns the number of new rows per stage."""
        import torch

        from . import ops

        digests = _digest_list(digests)
        known = self._space(space)
        if known is None:
            raise CacheError(
                f"unknown feature space {space!r}: get its id from FeatureStore.space_id(...)"
            )
        dtype = known[1]
        first = np.zeros(len(digests), dtype=bool)
        first[list({d: i for i, d in reversed(list(enumerate(digests)))}.values())] = True
        todo, written = [], {}
        for stage, x in stages.items():
            if not isinstance(stage, str) or not stage:
                raise CacheError(f"stage names must be non-empty strings, got {stage!r}")
            x = _as_rows(stage, x, len(digests))
            keep = np.flatnonzero(first & ~self._have(space, stage, digests))
            written[stage] = 0
            if not len(keep):
                continue
            rows = x if len(keep) == len(x) else x.index_select(0, torch.from_numpy(keep))
            _check_range(stage, rows, 65504.0 if dtype == "fp16" else 3.4e38)
            q, s = ops.quantize_int8(rows) if dtype == "int8" else (ops.quantize_fp16(rows), None)
            s = None if s is None else np.ascontiguousarray(s.numpy(), dtype=np.float32)
            todo.append((stage, [digests[i] for i in keep], np.ascontiguousarray(q.numpy()), s))
        if todo:
            written.update(self._commit(space, known, todo))
        return written

    def _commit(self, space: str, known: tuple[str, str], todo: list) -> dict[str, int]:
        """Temp file + fsync, rename, fsync folder, then one transaction for shards and entries."""
        text, dtype = known
        for stage, _, q, _ in todo:
            self._check_width(space, stage, q.shape[1])
        files: list[Path] = []
        committed = False
        try:
            with flock(self.dir / "lock", exclusive=False):
                records = []
                for stage, names, q, s in todo:
                    base = uuid.uuid4().hex
                    tmp, final = self.shard_dir / f"{base}.tmp", self.shard_dir / f"{base}.shard"
                    files += [tmp, final]
                    size, checksum = write_shard(tmp, dtype, q, s)
                    records.append((stage, names, final, q.shape, size, checksum))
                for _, _, final, *_ in records:
                    os.replace(final.with_suffix(".tmp"), final)
                fsync_dir(self.shard_dir)
                written = {}
                with self._lock, transaction(self._db()) as db:
                    now = time.time()
                    db.execute(
                        "INSERT OR IGNORE INTO spaces VALUES (?, ?, ?, ?)",
                        (space, dtype, text, now),
                    )
                    for stage, names, final, (rows, width), size, checksum in records:
                        sid = db.execute(
                            "INSERT INTO shards (name, space, stage, dtype, width, rows, nbytes, "
                            "checksum, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (final.name, space, stage, dtype, width, rows, size, checksum, now),
                        ).lastrowid
                        written[stage] = db.executemany(
                            "INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?)",
                            ((space, stage, d, sid, i) for i, d in enumerate(names)),
                        ).rowcount
                committed = True
            self._verified.update(r[2].name for r in records)  # written and checksummed here
            return written
        except BaseException as e:
            for path in [] if committed else files:  # a SIGKILL skips this; verify cleans up
                path.unlink(missing_ok=True)
            if is_disk_full(e) and not committed:
                needed = sum(layout(dtype, *q.shape)[1] for _, _, q, _ in todo)
                target = files[-1] if files else self.shard_dir
                raise DiskFullError(target, needed, CACHE_FULL_FIX) from None
            raise

    def _check_width(self, space: str, stage: str, width: int) -> None:
        sql = "SELECT width FROM shards WHERE space = ? AND stage = ? LIMIT 1"
        stored = self._db().execute(sql, (space, stage)).fetchone()
        if stored is not None and stored[0] != width:
            raise CacheError(
                f"stage {stage!r} of feature space {space} holds rows of width {stored[0]}, "
                f"got {width}; a different backbone or cut needs its own space description"
            )

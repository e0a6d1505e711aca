"""Looking after a FeatureStore: info, verify (and repair), clear. Backs `automl-tl cache`.

The functions take the store; `StoreMaintenance` gives FeatureStore the same three as methods
(this module needs no import of the store)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .housekeeping import folder_bytes
from .store_format import (
    DELETE_SHARD_ENTRIES,
    BadShard,
    CacheError,
    flock,
    fsync_dir,
    is_shard_name,
    map_shard,
    shard_path,
    transaction,
)

if TYPE_CHECKING:
    from .store import FeatureStore

__all__ = ["clear", "info", "verify", "StoreMaintenance"]


def _exists(store: FeatureStore) -> bool:
    return (store.dir / "index.sqlite").is_file()


def info(store: FeatureStore) -> dict:
    """Location, spaces (description, entries and width per stage), shards, bytes on disk."""
    out = {"location": str(store.dir), "exists": _exists(store), "spaces": [], "entries": 0}
    out.update(shards=0, shard_rows=0, unreferenced_rows=0, bytes_on_disk=0)
    out.update(bytes_per_value=None, fp32_fraction=None)
    if not out["exists"]:
        return out
    with store._lock, transaction(store._db(), "DEFERRED") as db:  # one consistent snapshot
        spaces = db.execute("SELECT id, dtype, description FROM spaces ORDER BY created, id")
        spaces = spaces.fetchall()
        entries = db.execute("SELECT space, stage, COUNT(*) FROM entries GROUP BY space, stage")
        entries = entries.fetchall()
        shards = db.execute(
            "SELECT space, stage, MAX(width), COUNT(*), SUM(rows), SUM(nbytes), SUM(rows * width) "
            "FROM shards GROUP BY space, stage"
        ).fetchall()
    per: dict[tuple[str, str], dict] = {}
    for space, stage, width, n, rows, nbytes, _ in shards:
        per[space, stage] = {"entries": 0, "width": width, "shards": n, "rows": rows}
        per[space, stage]["bytes"] = nbytes
    for space, stage, n in entries:
        per.setdefault((space, stage), {"width": None, "shards": 0, "rows": 0, "bytes": 0})
        per[space, stage]["entries"] = n
    for sid, dtype, description in spaces:
        stages = {stage: d for (space, stage), d in sorted(per.items()) if space == sid}
        out["spaces"].append(
            {
                "id": sid,
                "dtype": dtype,
                "description": json.loads(description),
                "entries": sum(d["entries"] for d in stages.values()),
                "stages": stages,
            }
        )
    values = sum(s[6] for s in shards)
    shard_bytes = sum(s[5] for s in shards)
    out["entries"] = sum(e[2] for e in entries)
    out["shards"] = sum(s[3] for s in shards)
    out["shard_rows"] = sum(s[4] for s in shards)
    out["unreferenced_rows"] = out["shard_rows"] - out["entries"]
    out["bytes_on_disk"] = folder_bytes(store.dir)
    if values:
        out["bytes_per_value"] = shard_bytes / values
        out["fp32_fraction"] = out["bytes_per_value"] / 4
    return out


def _check_shards(store: FeatureStore, shards: list) -> dict[int, str]:
    """{shard id: problem} for shards that are missing, resized, or fail header or checksum."""
    bad = {}
    for sid, name, *rec in shards:
        try:
            map_shard(shard_path(store.shard_dir, name), *rec)
        except BadShard as e:
            bad[sid] = f"shard {name}: {e}"
    return bad


def _stray_files(store: FeatureStore, indexed: set[str]) -> tuple[list[str], list[str]]:
    names = sorted(p.name for p in store.shard_dir.iterdir()) if store.shard_dir.is_dir() else []
    orphans = [n for n in names if n.endswith(".shard") and n not in indexed]
    return orphans, [n for n in names if n.endswith(".tmp")]


def _forget(store: FeatureStore, names: list[str]) -> None:
    for name in names:
        store._maps.pop(name, None)
        store._verified.discard(name)


def verify(store: FeatureStore, repair: bool = False) -> dict:
    """Check every shard (exists, size, header, checksum), every entry (points inside a healthy
    shard of its own space and stage), and stray files: temporaries and unindexed shards. With
    `repair`, drop bad entries and shards and delete strays. `ok` says nothing is left to fix."""
    report = {"location": str(store.dir), "shards": 0, "entries": 0, "bad_shards": 0}
    report.update(bad_entries=0, orphan_files=0, temp_files=0, problems=[], repaired=repair)
    if not _exists(store):
        return {**report, "ok": True}
    db = store._db()
    with flock(store.dir / "lock", exclusive=True):  # no put is between rename and commit
        index_ok = db.execute("PRAGMA quick_check").fetchone()[0]
        with store._lock, transaction(db, "DEFERRED"):
            shards = db.execute(
                "SELECT id, name, dtype, rows, width, nbytes, checksum FROM shards"
            ).fetchall()
            report["entries"] = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            outside = db.execute(
                "SELECT e.space, e.stage, e.digest, e.shard FROM entries AS e LEFT JOIN shards "
                "AS s ON s.id = e.shard WHERE s.id IS NULL OR e.row < 0 OR e.row >= s.rows "
                "OR e.space != s.space OR e.stage != s.stage"
            ).fetchall()
        bad = _check_shards(store, shards)
        in_bad = sum(
            db.execute(
                DELETE_SHARD_ENTRIES.replace("DELETE", "SELECT COUNT(*)"), (sid, sid)
            ).fetchone()[0]
            for sid in bad
        )
        outside = [e for e in outside if e[3] not in bad]
        orphans, temps = _stray_files(store, {s[1] for s in shards})
        problems = [] if index_ok == "ok" else [f"index: {index_ok}"]
        problems += list(bad.values())
        if outside:
            problems.append(f"{len(outside)} entries point outside their shard")
        problems += [f"orphan shard file {n} (not in the index)" for n in orphans]
        problems += [f"leftover temporary file {n}" for n in temps]
        report.update(shards=len(shards), bad_shards=len(bad), bad_entries=in_bad + len(outside))
        report.update(orphan_files=len(orphans), temp_files=len(temps), problems=problems)
        if repair:
            names = {s[0]: s[1] for s in shards}
            with store._lock, transaction(db) as tx:
                tx.executemany(DELETE_SHARD_ENTRIES, [(s, s) for s in bad])
                tx.executemany("DELETE FROM shards WHERE id = ?", [(s,) for s in bad])
                tx.executemany(
                    "DELETE FROM entries WHERE space = ? AND stage = ? AND digest = ?",
                    [e[:3] for e in outside],
                )
            gone = [names[s] for s in bad if is_shard_name(names[s])] + orphans + temps
            for name in gone:
                (store.shard_dir / name).unlink(missing_ok=True)
            fsync_dir(store.shard_dir)
            _forget(store, gone)
    report["ok"] = index_ok == "ok" and (repair or not problems)
    return report


def _resolve(db, space: str) -> str:
    ids = [r[0] for r in db.execute("SELECT id FROM spaces ORDER BY id")]
    if space in ids:
        return space
    matches = [i for i in ids if i.startswith(space)] if len(space) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(ids) or "none"
    raise CacheError(
        f"no single feature space matches {space!r} (known: {known}); see `automl-tl cache info`"
    )


def clear(store: FeatureStore, space: str | None = None) -> dict:
    """Delete every cached feature (and stray files), or those of one space (id or unique
    prefix of at least 4 characters). Returns what was removed."""
    out = {"location": str(store.dir), "space": space, "spaces": 0, "shards": 0, "entries": 0}
    out["bytes_freed"] = 0
    if not _exists(store):
        if space is not None:
            raise CacheError(f"no feature cache at {store.dir}, so no space {space!r} to clear")
        return out
    db = store._db()
    with flock(store.dir / "lock", exclusive=True):
        space = out["space"] = _resolve(db, space) if space is not None else None
        where, args = ("WHERE space = ?", (space,)) if space else ("", ())
        with store._lock, transaction(db):
            shards = db.execute(f"SELECT name, nbytes FROM shards {where}", args).fetchall()
            out["entries"] = db.execute(f"DELETE FROM entries {where}", args).rowcount
            db.execute(f"DELETE FROM shards {where}", args)
            where = "WHERE id = ?" if space else ""
            out["spaces"] = db.execute(f"DELETE FROM spaces {where}", args).rowcount
        names = [s[0] for s in shards if is_shard_name(s[0])]  # never delete outside the folder
        out["shards"], out["bytes_freed"] = len(shards), sum(s[1] for s in shards)
        if space is None:
            names += sum(_stray_files(store, set(names)), [])
        for name in names:
            (store.shard_dir / name).unlink(missing_ok=True)
        fsync_dir(store.shard_dir)
        _forget(store, names)
        store._spaces.clear()
    return out


class StoreMaintenance:
    """`info`, `verify` and `clear` as methods of a FeatureStore."""

    def info(self: FeatureStore) -> dict:
        """Location, spaces with descriptions, entries per space and stage, shards, bytes."""
        return info(self)

    def verify(self: FeatureStore, repair: bool = False) -> dict:
        """Check every shard (exists, size, header, checksum), every entry (inside its shard)
        and stray files; with `repair`, drop what is bad and delete strays. Returns counts."""
        return verify(self, repair)

    def clear(self: FeatureStore, space: str | None = None) -> dict:
        """Delete every cached feature, or those of one space (id or unique id prefix)."""
        return clear(self, space)

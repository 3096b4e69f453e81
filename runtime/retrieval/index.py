"""The device's vector index file: sqlite-vec through apsw, in WAL mode, with its collections.

The standard library's ``sqlite3`` cannot load extensions on many Python builds, so the
index (like the outbox) goes through apsw. On open, an integrity check: a damaged file is
renamed aside (kept), every item that can still be read is copied into a fresh file and its
vec0 index rebuilt from the stored float vectors; ``VectorIndex.recovery`` says what happened.
A collection whose vec0 table disagrees with its items (counts differ) is re-indexed from them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import apsw

from edgeloop.runtime.sqlite_files import bound_wal, integrity_problem, quarantine, time_limit

from .collection import SPEC_COLUMNS, SPEC_MARKS, Collection, Spec, check_name, create_tables
from .errors import ModelVersionMismatch, RetrievalError, UnknownCollection

log = logging.getLogger("edgeloop.index")

SCHEMA_VERSION = 1
CHECK_SECONDS = 60.0
_REGISTRY = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY, dim INTEGER NOT NULL, metric TEXT NOT NULL, storage TEXT NOT NULL,
    model TEXT, model_version TEXT, metadata TEXT NOT NULL, partition TEXT NOT NULL,
    keep_sources INTEGER NOT NULL, int8_scale REAL, center BLOB, fitted INTEGER NOT NULL,
    cells INTEGER NOT NULL, centroids BLOB, version INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');
"""
_ITEM_COLUMNS = "rowid, id, label, metadata, part, aux, document, vector, source, source_type, version"


def load_sqlite_vec(db: apsw.Connection) -> None:
    try:
        import sqlite_vec
    except ImportError as exc:
        raise RetrievalError("sqlite-vec is not installed", "pip install sqlite-vec") from exc
    db.enable_load_extension(True)
    db.load_extension(sqlite_vec.loadable_path())
    db.enable_load_extension(False)


class VectorIndex:
    """``VectorIndex(path)``; ``create(...)`` / ``collection(name)``; ``close()``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recovery: dict[str, Any] | None = None
        self.lock = threading.RLock()  # one connection; callers on several threads take turns
        self._db = self._open()

    def _connect(self) -> apsw.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = apsw.Connection(str(self.path))
        db.setbusytimeout(5000)
        load_sqlite_vec(db)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # the index is rebuildable; the outbox is the durable queue
        bound_wal(db)
        return db

    def _open(self) -> apsw.Connection:
        try:
            db = self._connect()
            problem = integrity_problem(db, CHECK_SECONDS)
            if problem is None:
                with db:
                    db.execute(_REGISTRY)
                self._heal(db)
                return db
            db.close()
        except apsw.Error as exc:
            problem = f"{type(exc).__name__}: {exc}"
        aside = quarantine(self.path, problem)
        db = self._connect()
        with db:
            db.execute(_REGISTRY)
        self.recovery = {"quarantined": str(aside), "reason": problem, **_salvage(aside, db)}
        log.error("index: %s", self.recovery)
        return db

    def _heal(self, db: apsw.Connection) -> None:
        """A vec0 table that does not hold exactly the items' rows is rebuilt from them."""
        for row in db.execute(f"SELECT {SPEC_COLUMNS} FROM collections").fetchall():
            c = Collection(db, Spec.from_row(row))
            try:
                indexed = db.execute(f'SELECT count(*) FROM "vec_{c.name}_rowids"').fetchone()[0]
                ok = indexed == len(c)
            except apsw.Error:
                ok = False
            if not ok:
                log.error("index: collection '%s' disagrees with its items; re-indexing", c.name)
                c.reindex()
                self.recovery = {**(self.recovery or {}), f"reindexed_{c.name}": len(c)}

    def create(self, name: str, dim: int, *, metric: str = "cosine", storage: str = "float",
               model: str | None = None, model_version: str | None = None,
               metadata: dict[str, str] | None = None, partition: tuple[str, str] | None = None,
               keep_sources: bool = True, cells: int = 0) -> Collection:
        """A new collection; RetrievalError if one of that name exists. ``cells`` > 0 groups the
        vectors into k-means cells (trained from the first vectors, again as the collection
        doubles up to 65,536) so that a query scans only the cells nearest to it."""
        spec = Spec(name, dim, metric, storage, model, model_version, dict(metadata or {}),
                    tuple(partition) if partition else None, keep_sources, cells=cells).validate()  # type: ignore[arg-type]
        with self.lock, self._db:
            if self._db.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone():
                raise RetrievalError(f"collection '{name}' already exists", "open it with collection(), or drop it")
            self._db.execute(f"INSERT INTO collections ({SPEC_COLUMNS}) VALUES ({SPEC_MARKS})", spec.row())
            create_tables(self._db, spec)
        return Collection(self._db, spec, self.lock)

    def collection(self, name: str, *, model: str | None = None, model_version: str | None = None) -> Collection:
        """An existing collection. With ``model``/``model_version``: refuses (typed) when the
        collection was built by another embedding model or version."""
        check_name("collection", name)
        row = self._db.execute(f"SELECT {SPEC_COLUMNS} FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            have = ", ".join(self.names()) or "none"
            raise UnknownCollection(f"no collection '{name}' in {self.path}",
                                    f"create it first (collections here: {have})")
        c = Collection(self._db, Spec.from_row(row), self.lock)
        spec = c.spec
        if (model is not None and model != spec.model) or (model_version is not None and model_version != spec.model_version):
            sources = c.stats()["with_sources"]
            fix = (f"rebuild it with the new model: Collection.rebuild() or `edgeloop index rebuild {name}` "
                   f"re-embeds its {sources} stored sources" if sources else
                   "create a new collection: this one keeps no sources to re-embed")
            built = f"{spec.model} {spec.model_version}" if spec.model else "vectors given as they are (no model)"
            raise ModelVersionMismatch(f"collection '{name}' was built by {built}, not {model} {model_version}", fix)
        return c

    def names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM collections ORDER BY name")]

    def drop(self, name: str) -> None:
        self.collection(name)
        with self.lock, self._db:
            for table in (f"vec_{name}", f"items_{name}", f"tombstones_{name}"):
                self._db.execute(f'DROP TABLE IF EXISTS "{table}"')
            self._db.execute("DELETE FROM collections WHERE name = ?", (name,))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "VectorIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _salvage(aside: Path, db: apsw.Connection) -> dict[str, Any]:
    """Copy what can be read from a damaged file: each collection's spec and items, 500 rows
    at a time (a damaged stretch is skipped and counted); then build the vec0 tables anew."""
    report: dict[str, Any] = {"collections": {}, "lost_collections": []}
    try:
        old = apsw.Connection(str(aside), flags=apsw.SQLITE_OPEN_READONLY)
        with time_limit(old, 5.0):
            specs = old.execute(f"SELECT {SPEC_COLUMNS} FROM collections").fetchall()
    except (apsw.Error, ValueError) as exc:
        report["error"] = f"the collections table cannot be read: {exc}"
        return report
    for row in specs:
        try:
            spec = Spec.from_row(row).validate()
        except (RetrievalError, ValueError, TypeError):
            report["lost_collections"].append(str(row[0]))
            continue
        with db:
            db.execute(f"INSERT INTO collections ({SPEC_COLUMNS}) VALUES ({SPEC_MARKS})", spec.row())
            create_tables(db, spec)
        copied = lost = 0
        after = 0
        for _ in range(100_000):
            try:
                with time_limit(old, 1.0):
                    rows = old.execute(f'SELECT {_ITEM_COLUMNS} FROM "items_{spec.name}" WHERE rowid > ? '
                                       "ORDER BY rowid LIMIT 500", (after,)).fetchall()
            except (apsw.Error, ValueError):
                lost += 1
                after += 500
                if lost > 64:
                    break
                continue
            if not rows:
                break
            good = [r for r in rows if isinstance(r[7], bytes) and len(r[7]) == 4 * spec.dim]
            with db:
                db.executemany(f'INSERT OR IGNORE INTO "items_{spec.name}" ({_ITEM_COLUMNS}) '
                               f"VALUES ({','.join('?' * 11)})", good)
            copied += len(good)
            lost += len(rows) - len(good)
            after = rows[-1][0]
        indexed = Collection(db, spec).reindex()
        report["collections"][spec.name] = {"salvaged": copied, "lost": lost, "indexed": indexed}
    old.close()
    return report

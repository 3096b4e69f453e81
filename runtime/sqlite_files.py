"""What the outbox and the retrieval index share about their SQLite files: a bounded WAL,
damaged files renamed aside (kept, never deleted), and time-limited reads of a damaged file."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import apsw

log = logging.getLogger("edgeloop.sqlite")


WAL_CHECKPOINT_PAGES = 256  # checkpoint once the log holds this many pages (1 MB at 4 KB pages)
WAL_KEEP_BYTES = 1024 * 1024  # and truncate it back to this after a checkpoint


def bound_wal(db: apsw.Connection) -> None:
    """A small WAL: on a small or nearly full data disk the log must not eat the room the
    records need (SQLite's default lets it reach 4 MB and keeps the file at its largest)."""
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")


def quarantine(path: Path, reason: str) -> Path:
    """Rename a damaged database (and its WAL/SHM) aside; nothing is deleted."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    log.error("%s is damaged (%s); kept as %s, salvaging what can be read", path, reason, aside)
    return aside


@contextmanager
def time_limit(conn: apsw.Connection, seconds: float) -> Iterator[None]:
    """Interrupt statements on ``conn`` that run past ``seconds``: a corrupt page can send
    SQLite round in circles, and a device must not hang on its own files."""
    deadline = time.monotonic() + seconds
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        yield
    finally:
        conn.set_progress_handler(None)


def integrity_problem(conn: apsw.Connection, seconds: float) -> str | None:
    """``PRAGMA integrity_check`` within ``seconds``: None when the file is sound, else what is wrong."""
    try:
        with time_limit(conn, seconds):
            check = conn.execute("PRAGMA integrity_check").fetchall()
    except apsw.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    if check != [("ok",)]:
        return "; ".join(str(r[0]) for r in check[:3])
    return None

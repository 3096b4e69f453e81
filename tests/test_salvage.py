"""Honest salvage and order: a damaged outbox keeps every row a point lookup can still read with
a valid checksum (a sweep over damaged files), its loss count is what is known lost, and the
file made after it never reuses a seq (a new epoch, seqs after the damaged file's highest).
Also: the retrieval index's WAL stays bounded on a 2 MB data disk."""

from __future__ import annotations

import os
import random
from pathlib import Path

import apsw
import numpy as np

from conftest import tmpfs

from edgeloop.sync.outbox import _SELECT, Outbox, _checked

FILES = int(os.environ.get("EDGELOOP_SALVAGE_FILES", "50"))


def _readable(path: Path, top: int) -> dict[int, str]:
    """The oracle: every seq 1..top that a point lookup reads with a valid checksum."""
    found: dict[int, str] = {}
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error:
        return found
    for seq in range(1, top + 1):
        try:
            row = db.execute(f"SELECT {_SELECT} FROM records WHERE seq = ?", (seq,)).fetchone()
        except (apsw.Error, ValueError):  # a damaged serial type can make a blob read as bad text
            continue
        checked = _checked(row) if row is not None else None
        if checked is not None:
            found[checked[0]] = checked[1]
    db.close()
    return found


def _damage(path: Path, rng: random.Random) -> None:
    size = path.stat().st_size
    pages = size // 4096
    with open(path, "r+b") as f:
        for _ in range(rng.randint(1, 4)):
            page = rng.randint(2, pages - 1)
            f.seek(page * 4096 + rng.randint(0, 3500))
            f.write(os.urandom(rng.randint(16, 600)))


def test_a_sweep_of_damaged_outboxes_keeps_what_a_lookup_can_read_and_never_reuses_a_seq(tmp_path):
    rng = random.Random(1234)
    oracle_total = kept_total = named_lost = truly_lost = 0
    for n in range(FILES):
        path = tmp_path / f"o{n}.db"
        with Outbox(path, "d") as box:
            made = box.enqueue_many(("s", {"n": i, "pad": "z" * rng.randint(10, 300)}) for i in range(1200))
            epoch = box.epoch
            gone = box.next_batch(max_records=rng.randint(0, 300), live_share=0.3)
            box.ack(r["seq"] for r in gone)  # holes, as a drain leaves them
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        ids = {e.seq: e.id for e in made}
        top = max(ids)
        _damage(path, rng)
        oracle = _readable(path, top)
        assert all(ids[s] == rid for s, rid in oracle.items())
        with Outbox(path, "d") as box:
            kept = {r["seq"]: r["id"] for r in box.next_batch(max_records=10_000, max_bytes=1 << 30, live_share=0)}
            assert all(ids[s] == rid for s, rid in kept.items())  # only intact records, under their own seq
            new = box.enqueue("s", {"after": n})
            assert new.seq > top  # never a seq used before
            if box.salvage is not None:
                assert box.epoch != epoch and box.salvage["old_epoch"] == epoch
                assert box.salvage["salvaged"] == len(kept)
                named_lost += box.salvage["lost"]
                truly_lost += len(ids) - len(gone) - len(kept)
                assert all(r.get("epoch") == epoch for r in box.next_batch(max_records=10_000, live_share=0)
                           if r["seq"] <= top)
        oracle_total += len(oracle)
        kept_total += len(set(kept) & set(oracle))
    print(f"salvage sweep: {FILES} files, {kept_total} of {oracle_total} readable rows kept; "
          f"{named_lost} named lost of {truly_lost} lost")
    assert kept_total >= 0.99 * oracle_total
    # The loss named is what the table and its indexes say existed and was not kept: within a
    # few records of the truth (a damaged page can name a seq that was deleted, or hide one).
    assert abs(named_lost - truly_lost) <= max(5, 0.05 * truly_lost), (named_lost, truly_lost)


def test_the_index_wal_stays_bounded_on_a_2_mb_disk(tmp_path):
    from edgeloop.runtime.retrieval import VectorIndex
    bound = 1024 * 1024  # what the outbox keeps to as well (runtime.sqlite_files.bound_wal)

    rng = np.random.default_rng(3)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        index = VectorIndex(disk / "index.db")
        col = index.create("frames", 64)
        wal = Path(str(disk / "index.db") + "-wal")
        largest = 0
        for batch in range(200):  # many small transactions, as the agent's index sink makes them
            vectors = rng.standard_normal((8, 64)).astype(np.float32)
            col.upsert([f"k{batch % 40}-{i}" for i in range(8)], vectors)  # replaced: the data stays small
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
        index.close()
    # One checkpoint's worth of pages, and truncated back after it: far below the disk's size.
    assert largest <= bound + 64 * 1024, largest

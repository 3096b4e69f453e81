"""SIGKILL a process in the middle of batch inserts into the index, again and again: on reopen
every batch is either wholly present, vectors and metadata, or absent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time


from edgeloop.runtime.retrieval import VectorIndex

KILLS = int(os.environ.get("EDGELOOP_INDEX_KILLS", "12"))
BATCH = 200
WRITER = r"""
import sys, numpy as np
from edgeloop.runtime.retrieval import VectorIndex
path, start = sys.argv[1], int(sys.argv[2])
index = VectorIndex(path)
c = index.collection("k") if "k" in index.names() else index.create("k", 64, storage="binary", metadata={"batch": "integer"})
rng = np.random.default_rng(start)
j = start
while True:
    x = rng.standard_normal((200, 64)).astype(np.float32)
    c.upsert([f"b{j}-{i}" for i in range(200)], x, labels=[f"b{j}"] * 200, metadata=[{"batch": j}] * 200)
    print(j, flush=True)
    j += 1
"""


def test_killed_during_batch_inserts_every_batch_is_whole_or_absent(tmp_path):
    path = tmp_path / "index.db"
    rng = random.Random(7)
    start = 0
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start)], stdout=subprocess.PIPE,
                                text=True)
        proc.stdout.readline()  # at least one batch went in; kill somewhere inside the next ones
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].split()
        proc.wait()
        start += len(out) + 5  # batches the next writer numbers are new ones
    with VectorIndex(path) as index:
        assert index.recovery is None  # nothing had to be repaired
        c = index.collection("k")
        db = c._db
        items = dict(db.execute('SELECT label, count(*) FROM "items_k" GROUP BY label'))
        assert items and all(n == BATCH for n in items.values()), items
        indexed = db.execute('SELECT count(*) FROM "vec_k_rowids"').fetchone()[0]
        assert indexed == len(c) == BATCH * len(items)
        per_batch = dict(db.execute('SELECT batch, count(*) FROM "vec_k" GROUP BY batch'))
        assert {f"b{b}": n for b, n in per_batch.items()} == items  # metadata in the index matches
        some = c.get(next(iter(items)) + "-7")
        assert some is not None and c.query(some["vector"], 1)[0].id == some["id"]

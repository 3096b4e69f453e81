"""Kill storm on the outbox alone: a process enqueuing and acknowledging is SIGKILLed at
random moments and restarted. Every record whose enqueue returned is on disk (or was acked,
and an ack that returned is never undone), and the file passes its integrity check.

The same code runs with more kills in ``make soak`` (EDGELOOP_SOAK_KILLS)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import apsw

CHILD = r"""
import sys
from edgeloop.sync.outbox import Outbox
box = Outbox(sys.argv[1], "dev")
n = 0
while True:
    done = box.enqueue_many(("s", {"n": n, "pad": "x" * 150}) for _ in range(1 + n % 7))
    for d in done:
        print("E", d.id, flush=True)
    n += 1
    if n % 5 == 0:
        batch = box.next_batch(max_records=20, live_share=0.25)
        for r in batch:
            print("P", r["id"], flush=True)  # about to be acknowledged: may be gone after a kill
        box.ack(r["seq"] for r in batch)
        for r in batch:
            print("A", r["id"], flush=True)  # acknowledged: must never come back
"""


def test_kill_storm_loses_nothing_that_returned(tmp_path):
    kills = int(os.environ.get("EDGELOOP_SOAK_KILLS", "20"))
    rng = random.Random(7)
    path = tmp_path / "outbox.db"
    seen: dict[str, set[str]] = {"E": set(), "P": set(), "A": set()}
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 0.9))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        for line in out.splitlines():
            kind, _, rid = line.partition(" ")
            if len(rid) == 32 and kind in seen:  # the kill can tear the last line: it reported nothing
                seen[kind].add(rid)
    db = apsw.Connection(str(path))
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    on_disk = {r[0] for r in db.execute("SELECT id FROM records")}
    enqueued, pending, acked = seen["E"], seen["P"], seen["A"]
    assert len(enqueued) > 1000 and len(acked) > 50
    assert (enqueued - pending) <= on_disk, f"lost {len((enqueued - pending) - on_disk)} records"
    assert not (acked & on_disk), "an acknowledged record came back"

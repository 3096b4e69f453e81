"""Crash-point sweep: the outbox process is SIGKILLed at the Nth fdatasync, pwrite64 or write
(strace's syscall fault injection) for N across a whole enqueue-and-ack run. After every
crash: the file passes its integrity check, nothing whose enqueue returned is lost, nothing
whose ack returned comes back. The suite takes every fdatasync and every 4th write;
``make soak`` (EDGELOOP_SOAK_CRASH_STEP=1) takes every one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

CHILD = r"""
import sys
from edgeloop.sync.outbox import Outbox
box = Outbox(sys.argv[1], "dev")
for n in range(12):
    e = box.enqueue("s", {"n": n})
    print("E", e.id, flush=True)
    if n % 4 == 3:
        batch = box.next_batch(max_records=3, live_share=0)
        for r in batch:
            print("P", r["id"], flush=True)
        box.ack(r["seq"] for r in batch)
        for r in batch:
            print("A", r["id"], flush=True)
box.close()
"""
STRACE = shutil.which("strace")


def run(db: Path, syscall: str, when: int | None, log: Path) -> str:
    cmd = [STRACE, "-f", "-qq", "-o", str(log), "-e", f"trace={syscall}"]
    if when is not None:
        cmd += ["-e", f"inject={syscall}:signal=SIGKILL:when={when}"]
    proc = subprocess.run(cmd + [sys.executable, "-c", CHILD, str(db)], capture_output=True, text=True, timeout=60)
    return proc.stdout


def count_calls(tmp: Path, syscall: str) -> int:
    log = tmp / f"count-{syscall}.log"
    run(tmp / f"count-{syscall}.db", syscall, None, log)
    return sum(1 for line in log.read_text().splitlines() if re.search(rf"\b{syscall}\(", line))


@pytest.mark.parametrize("syscall", ["fdatasync", "pwrite64", "write"])
def test_crash_at_every_sync_and_write(tmp_path, syscall):
    if STRACE is None:
        pytest.fail("strace is not installed (Debian: apt-get install strace; `make test` does it)", pytrace=False)
    total = count_calls(tmp_path, syscall)
    assert total > 5, f"only {total} {syscall} calls: the sweep would prove nothing"
    step = 1 if syscall == "fdatasync" else int(os.environ.get("EDGELOOP_SOAK_CRASH_STEP", "4"))
    crashes = 0
    for when in range(1, total + 1, step):
        db = tmp_path / f"{syscall}-{when}.db"
        out = run(db, syscall, when, tmp_path / "trace.log")
        seen: dict[str, set[str]] = {"E": set(), "P": set(), "A": set()}
        for line in out.splitlines():
            kind, _, rid = line.partition(" ")
            if len(rid) == 32 and kind in seen:
                seen[kind].add(rid)
        if not db.exists():
            assert not seen["E"], f"{syscall}#{when}: enqueues returned but there is no file"
            continue
        conn = apsw.Connection(str(db))
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"{syscall}#{when}: corrupt"
            on_disk = {r[0] for r in conn.execute("SELECT id FROM records")} if conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name='records'").fetchone() else set()
        finally:
            conn.close()
        assert seen["E"] - seen["P"] <= on_disk, f"{syscall}#{when}: lost {seen['E'] - seen['P'] - on_disk}"
        assert not (seen["A"] & on_disk), f"{syscall}#{when}: an acknowledged record came back"
        crashes += 1
    assert crashes >= total // step - 1

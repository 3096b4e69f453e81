"""The link cut for a while (a blackholing proxy): the device keeps enqueuing, its memory stays
flat, and everything arrives after the link heals. 10 s here; 60 s in ``make soak``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


from edgeloop.tools.testing.faultproxy import FaultProxy
from conftest import wait_for

DEVICE = r"""
import sys, time
from edgeloop.sync.link import LinkConfig, MqttLink
from edgeloop.sync.outbox import Outbox
box = Outbox(sys.argv[1], "cam-cut")
link = MqttLink(box, LinkConfig("127.0.0.1", int(sys.argv[2]), fleet="f1", device="cam-cut",
                                keepalive_s=2, backoff_max_s=1.0))
link.start()
n = 0
while True:
    for e in box.enqueue_many(("s", {"n": n, "pad": "z" * 150}) for _ in range(10)):
        print(e.id, flush=True)
    n += 1
    time.sleep(0.02)
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_link_cut_then_healed_delivers_everything(tmp_path, broker, regional):
    outage = float(os.environ.get("EDGELOOP_LINK_CUT_S", "10"))
    proxy = FaultProxy(broker.port)
    device = subprocess.Popen([sys.executable, "-c", DEVICE, str(tmp_path / "outbox.db"), str(proxy.port)],
                              stdout=subprocess.PIPE, text=True)
    ids: list[str] = []  # appended by the reader thread; snapshots are slices

    def read_ids() -> None:
        for line in device.stdout:
            if len(line.strip()) == 32:  # the kill can tear the last line
                ids.append(line.strip())

    import threading

    reader = threading.Thread(target=read_ids, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(ids) > 200 and set(ids[:200]) <= regional.ids(), 20, "the link to carry records")
        time.sleep(1.0)
        rss_before = rss_kib(device.pid)
        proxy.cut()
        time.sleep(outage)
        rss_during = rss_kib(device.pid)
        before_heal = set(ids[:])
        proxy.heal()
        healed = time.monotonic()
        wait_for(lambda: before_heal <= regional.ids(), 30, "delivery within 30 s of healing")
        delay = time.monotonic() - healed
    finally:
        device.send_signal(signal.SIGKILL)
        device.wait(10)
        reader.join(5)
        proxy.close()
    assert rss_during - rss_before < 10 * 1024, f"RSS grew {rss_during - rss_before} KiB during the outage"
    assert delay < 30
    assert len(before_heal) > 1000  # the device kept enqueuing through the outage
    # Records of the last instant before the kill are either still in the outbox file or on
    # their way from the broker to the receiver: none may be lost.
    import apsw

    db = apsw.Connection(str(tmp_path / "outbox.db"))
    left = {r[0] for r in db.execute("SELECT id FROM records")}
    db.close()
    wait_for(lambda: set(ids[:]) - left <= regional.ids(), 10, "the records the broker acknowledged")

"""One process of ``edgeloop bench regional``'s simulated fleet: ``--count`` light devices,
each a real outbox file and a real MQTT link, enqueuing ``--rate`` records/s for ``--seconds``
and then draining. Each record's enqueue → committed-ack latency is taken where the device
deletes it (the regional commit ack), and the process writes what it saw to ``--out`` (JSON,
the latencies beside it as ``.npy``).

Run by the coordinator (``tools/bench/regional.py``), not by hand."""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgeloop.sync.link import LinkConfig, MqttLink
from edgeloop.sync.link_hub import LinkHub
from edgeloop.sync.outbox import Outbox
from edgeloop.sync.outbox_writer import SharedWriter

SLOTS = 20  # phases a period is divided into



class TimedOutbox(Outbox):
    """An outbox that notes when each of its records was enqueued and when its commit ack
    deleted it. Enqueues do not wait for their commit (``enqueue_then``): one thread feeds a
    hundred devices."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.enqueued_at: dict[int, float] = {}
        self.early: dict[int, float] = {}  # acked before the enqueue's callback noted the seq
        self.latencies: list[float] = []
        self.acked_at: list[float] = []
        self.enqueued = 0
        self.failed = 0
        self._noting = threading.Lock()

    def enqueue_timed(self, bodies: list[dict[str, Any]]) -> None:
        at = time.time()

        def stored(result: Any) -> None:
            if isinstance(result, BaseException):
                self.failed += len(bodies)
                return
            with self._noting:
                for done in result:
                    acked = self.early.pop(done.seq, None)
                    if acked is None:
                        self.enqueued_at[done.seq] = at
                    else:
                        self._note(at, acked)

        self.enqueued += len(bodies)
        self.enqueue_then([("sim", b) for b in bodies], stored)

    def ack(self, seqs: Iterable[int], epoch: str | None = None) -> int:
        seqs = list(seqs)
        removed = super().ack(seqs, epoch)
        now = time.time()
        with self._noting:
            for seq in seqs:
                at = self.enqueued_at.pop(seq, None)
                if at is None:
                    self.early[seq] = now
                else:
                    self._note(at, now)
        return removed

    def _note(self, enqueued: float, acked: float) -> None:
        self.latencies.append(acked - enqueued)
        self.acked_at.append(acked)

    def settled(self) -> bool:
        return len(self.latencies) + self.failed >= self.enqueued


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="records/s per device")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--every", type=float, default=1.0, help="each device enqueues its records this often (s)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--drain-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket and 3 files per device
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * args.count + 256)), hard))

    names = [f"sim-{n:05d}" for n in range(args.first, args.first + args.count)]
    # synchronous=NORMAL: a thousand devices share this machine's one disk, where each real one
    # has its own; the fsync per enqueue is not what the simulator measures.
    # One thread commits for all this process's outboxes and one runs their links (the network
    # and the drains): a thread or two per device spent most of the time switching between them.
    writer = SharedWriter()
    boxes = [TimedOutbox(args.dir / f"{name}.db", name, synchronous="NORMAL", writer=writer) for name in names]
    hub = LinkHub()
    links = [MqttLink(box, LinkConfig("127.0.0.1", args.port, fleet=args.fleet, device=name, batch_records=500,
                                      commit_timeout_s=20.0), hub=hub)
             for box, name in zip(boxes, names)]
    for link in links:
        link.start()
    deadline = time.monotonic() + 30 + 0.05 * len(links)
    while (online := sum(link.stats()["state"] == "online" for link in links)) < len(links):
        if time.monotonic() > deadline:
            print(f"only {online} of {len(links)} devices online", flush=True)
            return 1
        time.sleep(0.05)
    # Hundreds of devices' objects in one process: the cyclic collector's full passes over them
    # took most of the process's time (measured); what exists now is never garbage.
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    print("ready", flush=True)  # the coordinator answers with the wall-clock time the load starts
    args.start_at = float(sys.stdin.readline())
    per_period = args.rate * args.every
    credit = [0.0] * len(boxes)
    # Devices are not in step: each enqueues once a period at a phase of its own (one of
    # SLOTS), as a fleet's clocks and sensors would, not all at the top of each second.
    slot_s = args.every / SLOTS
    time.sleep(max(0.0, args.start_at - time.time()))
    end = args.start_at + args.seconds
    tick, slot = args.start_at, 0
    while time.time() < end:
        for i in range(slot, len(boxes), SLOTS):
            credit[i] += per_period
            k = int(credit[i])
            if k:
                credit[i] -= k
                boxes[i].enqueue_timed([{"pad": "x" * 100}] * k)
        slot = (slot + 1) % SLOTS
        tick += slot_s
        time.sleep(max(0.0, tick - time.time()))
    deadline = time.time() + args.drain_timeout
    while time.time() < deadline and not all(box.settled() for box in boxes):
        time.sleep(0.1)
    report: dict[str, Any] = {"devices": {}}
    latencies: list[float] = []
    # Past the start's ramp, and a whole number of enqueue periods long: with records enqueued
    # in bursts, a window starting mid-period would count a burst short.
    warm = args.every * math.ceil(min(2.0, args.seconds / 4) / args.every)
    window = (args.start_at + warm, end)
    for name, box, link in zip(names, boxes, links):
        report["devices"][name] = {"enqueued": box.enqueued, "acked": len(box.latencies), "failed": box.failed,
                                   "left": box.enqueued - len(box.latencies) - box.failed, "resent": box.resent,
                                   "in_window": sum(1 for t in box.acked_at if window[0] <= t <= window[1])}
        latencies += box.latencies
    report["window_s"] = window[1] - window[0]
    stoppers = [threading.Thread(target=link.stop, args=(2.0,)) for link in links]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    hub.stop()
    for box in boxes:
        box.close()
    writer.stop()
    np.save(args.out.with_suffix(".npy"), np.asarray(latencies, dtype=np.float64))
    args.out.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

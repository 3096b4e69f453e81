"""``edgeloop bench regional --devices N``: a simulated fleet through a real broker into real
receivers and the regional store. The devices are real outbox files and real MQTT links, a
few hundred to a process (``tools/bench/fleet_devices.py``); the receivers are ``edgeloop
regional run`` processes sharing one ``$share`` subscription on PostgreSQL (or one receiver on
an SQLite file when PostgreSQL is not installed).

Reported: the ingest rate sustained over the load (records committed and acknowledged per
second, past the start's ramp), each record's enqueue → committed-ack latency (taken where the
device deletes it), fairness (each device's committed records over the median device's) and
exactly-once (every record enqueued is in the store once; duplicates the store dropped are
counted).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

FLEET = "sim"
# A process's devices share one link hub (epoll: no select() limit) and one outbox writer;
# each holds 4 descriptors (its outbox file, WAL, shared memory and socket). Past this many a
# process's one hub thread becomes the bottleneck, so a large fleet gets more processes.
DEVICES_PER_PROCESS = 500


def _store(workdir: Path, postgres: bool) -> tuple[str, Any, int]:
    """(target, server or None, receivers it takes)."""
    if postgres:
        try:
            from edgeloop.tools.testing.postgres import Postgres

            server = Postgres().start()
            return server.url, server, 2
        except (RuntimeError, OSError, KeyError):
            pass
    return str(workdir / "regional.db"), None, 1  # SQLite: one writer


def bench_regional(devices: int = 1000, seconds: float = 20.0, rate: float = 22.0, processes: int = 4,
                   postgres: bool = True, every: float = 1.0,
                   progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """``rate``: records/s each device enqueues (the fleet offers devices x rate), ``every``
    seconds ``rate x every`` at a time."""
    from edgeloop.sync.store import open_store
    from edgeloop.tools.testing.mosquitto import Mosquitto

    from .sync import receiver_process

    # The devices' outbox files on tmpfs where there is one: each real device has a disk of its
    # own, and a thousand of them syncing one disk measures the disk, not the regional tier.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-regional-",
                                     dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None) as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir).start()
        target, server, n_receivers = _store(workdir, postgres)
        receivers, procs = [], []
        try:
            receivers = [receiver_process(target, broker.port, f"bench-rx-{i}", fleet=FLEET,
                                          share="rx" if n_receivers > 1 else None) for i in range(n_receivers)]
            processes = max(processes, -(-devices // DEVICES_PER_PROCESS))
            progress(f"{n_receivers} receiver(s) on {'PostgreSQL' if server else 'SQLite'}; "
                     f"starting {devices} devices in {processes} processes")
            per = -(-devices // processes)
            for first in range(0, devices, per):
                out = workdir / f"devices-{first}.json"
                procs.append((out, subprocess.Popen(
                    [sys.executable, "-m", "edgeloop.tools.bench.fleet_devices", "--first", str(first),
                     "--count", str(min(per, devices - first)), "--rate", str(rate), "--seconds", str(seconds),
                     "--every", str(every),
                     "--port", str(broker.port), "--fleet", FLEET, "--dir", str(workdir), "--out", str(out)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)))
            for _, proc in procs:
                line = proc.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"bench regional: a device process did not start (exit {proc.wait()})")
            start = time.time() + 0.5
            for _, proc in procs:
                proc.stdin.write(f"{start}\n")
                proc.stdin.flush()
            progress(f"load: {devices} x {rate:g} records/s ({rate * every:g} every {every:g} s) "
                     f"for {seconds:g} s")
            for _, proc in procs:
                if proc.wait() != 0:
                    raise RuntimeError(f"bench regional: a device process failed (exit {proc.returncode})")
            reports = [json.loads(out.read_text()) for out, _ in procs]
            latencies = np.concatenate([np.load(out.with_suffix(".npy")) for out, _ in procs])
            time.sleep(0.5)  # the receivers' last commits
            store = open_store(target)
            try:
                stored = store.stats()["devices"]
            finally:
                store.close()
        finally:
            for _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for r in receivers:
                r.terminate()
                r.wait(30)
            broker.stop(kill=True)
            if server is not None:
                server.close()
    per_device = {name: d for r in reports for name, d in r["devices"].items()}
    window = reports[0]["window_s"]
    counts = [d["in_window"] for d in per_device.values()]
    median = statistics.median(counts)
    enqueued = sum(d["enqueued"] for d in per_device.values())
    in_store = sum(stored.get(name, {}).get("records", 0) for name in per_device)
    return {
        "devices": devices, "processes": len(procs), "receivers": n_receivers,
        "store": "postgresql" if server else "sqlite", "seconds": seconds, "enqueue_every_s": every,
        "offered_records_per_s": round(devices * rate, 1),
        "ingest_records_per_s": round(sum(counts) / window, 1) if window > 0 else None,
        "enqueue_to_ack_p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "enqueue_to_ack_p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
        "enqueue_to_ack_max_ms": round(float(latencies.max()) * 1000, 1),
        "share_min_of_median": round(min(counts) / median, 3) if median else None,
        "share_max_of_median": round(max(counts) / median, 3) if median else None,
        "enqueued": enqueued, "stored": in_store, "lost": enqueued - in_store,
        "left_on_devices": sum(d["left"] for d in per_device.values()),
        "resent": sum(d["resent"] for d in per_device.values()),
        "duplicates_dropped": sum(stored.get(name, {}).get("duplicates_dropped", 0) for name in per_device),
        "exactly_once": in_store == enqueued and all(
            stored.get(name, {}).get("records", 0) == d["enqueued"] for name, d in per_device.items()),
    }

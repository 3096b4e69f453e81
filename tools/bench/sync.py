"""``edgeloop bench sync``: the outbox and the link, against a Mosquitto it starts on loopback.

- ``enqueue_single_per_s``: one thread, one durable transaction (FULL sync) per record.
- ``enqueue_group_per_s``: 256 coroutines on one event loop enqueuing at once
  (``enqueue_async``), group-committed by the writer; ``group_commit_ratio`` = group / single.
- ``enqueue_group_threads_per_s``: the same with 16 threads calling ``enqueue``; each caller
  is an OS thread to wake per record, which bounds it well below the coroutines.
- ``drain_records_per_s``: a pre-filled outbox drained by the link through the broker into a
  regional receiver on an SQLite store, until every record's commit is acknowledged back and
  it is deleted from the outbox (end to end), timed from the link being online.
- ``drain_pg_records_per_s``: the same into a receiver on PostgreSQL (a server the bench starts
  on loopback, fsync on); ``copy_loop_records_per_s``: a bare psycopg loop COPYing the same rows
  in the same batches into a table and committing each, in the same run;
  ``drain_pg_ratio_copy`` = drain / COPY loop.
- ``paho_qos1_per_s``: a bare paho loop publishing the same records one per message at QoS 1
  (publish, wait for the PUBACK, next), in the same run; ``drain_ratio`` = drain / paho.
  ``paho_qos1_pipelined_per_s`` / ``drain_ratio_pipelined``: the same loop not waiting between
  publishes (paho's window of 20 in flight) — the stronger baseline, reported next to it.
- ``drain_rtt_records_per_s``: the drain through the fault proxy adding a 50 ms round trip,
  16 messages of 100 records in flight, next to its bound window x records / RTT.
Bodies are 200 bytes.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BODY = {"pad": "x" * 190}  # ~200 bytes of msgpack
ROUNDS = 3  # PostgreSQL drains and COPY loops, alternated; medians
# Records per PostgreSQL round: a sustained drain of about 2 s. At 50,000 (under half a second)
# the pipeline's fill and the last acks' round trip weigh on the drain and not on the COPY loop:
# 0.48 of it at 50,000, against 0.5-0.66 at 200,000, measured side by side on 2026-12-04.
PG_RECORDS = 200_000


def _enqueue_rates(workdir: Path, seconds: float) -> dict[str, float]:
    from edgeloop.sync.outbox import Outbox

    with Outbox(workdir / "single.db", "bench") as box:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            box.enqueue("s", BODY)
            n += 1
        single = n / (time.perf_counter() - start)
    with Outbox(workdir / "group.db", "bench") as box:
        group = asyncio.run(_coroutine_rate(box, 256, seconds))
    with Outbox(workdir / "threads.db", "bench") as box:
        counts = [0] * 16
        stop = threading.Event()

        def worker(k: int) -> None:
            while not stop.is_set():
                box.enqueue("s", BODY)
                counts[k] += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        threaded = sum(counts) / (time.perf_counter() - start)
    return {"enqueue_single_per_s": round(single, 1), "enqueue_group_per_s": round(group, 1),
            "group_commit_ratio": round(group / single, 2), "enqueue_group_threads_per_s": round(threaded, 1)}


async def _coroutine_rate(box: Any, writers: int, seconds: float) -> float:
    count, stop = [0], asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await box.enqueue_async("s", BODY)
            count[0] += 1

    tasks = [asyncio.create_task(writer()) for _ in range(writers)]
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return count[0] / (time.perf_counter() - start)


def _drain_rate(workdir: Path, port: int, records: int, name: str = "drain", store: str | None = None,
                receiver_port: int | None = None, **link: Any) -> float:
    """Records/s from a full outbox to an empty one, every record committed by a receiver on
    ``store`` (default: an SQLite file) and its commit acknowledged back. The receiver is
    ``edgeloop regional run`` in a process of its own, as the regional tier is another machine."""
    from edgeloop.sync.link import LinkConfig, MqttLink
    from edgeloop.sync.outbox import Outbox

    # A fleet of its own: the receivers of earlier drains keep their sessions at the broker,
    # which would queue this drain for them too (and slow it) if they shared its topics.
    receiver = receiver_process(store or str(workdir / f"{name}-regional.db"), receiver_port or port, f"bench-{name}",
                                fleet=name)
    with Outbox(workdir / f"{name}.db", "bench") as box:
        for chunk in range(0, records, 5000):
            box.enqueue_many(("s", BODY) for _ in range(min(5000, records - chunk)))
        link = MqttLink(box, LinkConfig("127.0.0.1", port, fleet=name, device=name, **link))
        try:
            link.start()
            while link.stats()["state"] != "online":  # connecting is not draining
                time.sleep(0.001)
            start = time.perf_counter()
            while link.stats()["delivered_records"] < records:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            link.stop()
            receiver.terminate()
            receiver.wait(30)
        left = sum(s["rows"] for s in box.stats()["streams"].values())
    if left:
        raise RuntimeError(f"bench sync: {left} records still in the outbox after the drain")
    return records / elapsed


def receiver_process(store: str, port: int, client_id: str, fleet: str = "bench", nice: int = 0,
                     share: str | None = None) -> subprocess.Popen:
    """``edgeloop regional run`` on ``store``, returned once its subscription is confirmed."""
    import os

    proc = subprocess.Popen([sys.executable, "-m", "edgeloop.tools.cli", "regional", "run", "--db", store,
                             "--broker", f"127.0.0.1:{port}", "--fleet", fleet, "--client-id", client_id,
                             *(["--share", share] if share else [])],
                            stdout=subprocess.PIPE, text=True, preexec_fn=(lambda: os.nice(nice)) if nice else None)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("regional: subscribed"):
            return proc
        if line.startswith("regional: not subscribed"):
            break
    proc.kill()
    raise RuntimeError(f"bench sync: the receiver did not subscribe (exit {proc.wait()})")


def _drain_over_rtt(workdir: Path, port: int, records: int, rtt_s: float, window: int,
                    per_message: int) -> dict[str, Any]:
    """The drain through the fault proxy with a round trip added: the link must keep its
    window full, so it should approach window x records per message / RTT."""
    from edgeloop.tools.testing.faultproxy import FaultProxy

    proxy = FaultProxy(port, rtt_s=rtt_s)
    try:  # the device behind the slow link, the receiver beside the broker
        rate = _drain_rate(workdir, proxy.port, records, "rtt", receiver_port=port, inflight_window=window,
                           batch_records=per_message)
    finally:
        proxy.close()
    bound = window * per_message / rtt_s
    return {"rtt_ms": rtt_s * 1000, "rtt_window": window, "rtt_records_per_message": per_message,
            "drain_rtt_records_per_s": round(rate, 1), "drain_rtt_bound_per_s": round(bound, 1),
            "drain_rtt_fraction_of_bound": round(rate / bound, 3)}


def _paho_rates(port: int, messages: int) -> dict[str, float]:
    """A bare paho client publishing the records one per message at QoS 1: first the plain
    loop (publish, wait for its PUBACK, next), then pipelined (publish all, paho's default
    window of 20 in flight, wait for the last PUBACK)."""
    import msgpack
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    payload = msgpack.packb(BODY)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        start = time.perf_counter()
        for _ in range(messages // 4):
            client.publish("bench/paho", payload, qos=1).wait_for_publish(10)
        plain = (messages // 4) / (time.perf_counter() - start)
        start = time.perf_counter()
        last = [client.publish("bench/paho", payload, qos=1) for _ in range(messages)][-1]
        last.wait_for_publish(120)
        pipelined = messages / (time.perf_counter() - start)
    finally:
        client.disconnect()
        client.loop_stop()
    return {"paho_qos1_per_s": round(plain, 1), "paho_qos1_pipelined_per_s": round(pipelined, 1)}


def _copy_loop_rate(url: str, records: int, per_batch: int) -> float:
    """The bound for a PostgreSQL store: the same rows, pre-built, COPYed ``per_batch`` at a
    time into a table, one commit each (no MQTT, no decoding, no dedupe)."""
    import msgpack
    import psycopg
    from psycopg.types.string import BytesBinaryDumper

    from edgeloop.sync.store_postgres import ROW_TYPES

    body = msgpack.packb(BODY)
    rows = [(f"copy-{n:012d}", "bench", "e", n + 1, time.time(), "s", None, body, time.time()) for n in range(records)]
    with psycopg.connect(url) as conn:
        conn.adapters.register_dumper(bytes, BytesBinaryDumper)  # the store's fast path, here too
        conn.execute("DROP TABLE IF EXISTS copy_bound")
        conn.execute("CREATE TABLE copy_bound (id text PRIMARY KEY, device text, epoch text, seq bigint, "
                     "ts float8, stream text, trace text, body bytea, received float8)")
        conn.commit()
        start = time.perf_counter()
        for chunk in range(0, records, per_batch):
            with conn.cursor() as cur, cur.copy("COPY copy_bound FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(ROW_TYPES)
                for row in rows[chunk:chunk + per_batch]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE copy_bound")
        conn.commit()
    return records / elapsed


def _postgres_rates(workdir: Path, port: int, records: int) -> dict[str, Any]:
    try:
        from edgeloop.tools.testing.postgres import Postgres

        server = Postgres().start()
    except (RuntimeError, OSError, KeyError) as exc:
        return {"postgres": f"not measured: {exc}"}
    drains, copies = [], []
    try:  # side by side, in turns: this machine's speed drifts more than the figures differ
        for n in range(ROUNDS):
            drains.append(_drain_rate(workdir, port, records, f"drain-pg-{n}", store=server.url))
            copies.append(_copy_loop_rate(server.url, records, per_batch=1000))
    finally:
        server.close()
    drain, copy = statistics.median(drains), statistics.median(copies)
    return {"drain_pg_records": records, "drain_pg_records_per_s": round(drain, 1),
            "copy_loop_records_per_s": round(copy, 1),
            "drain_pg_ratio_copy": round(drain / copy, 2),
            "drain_pg_rounds_per_s": [round(r) for r in drains], "copy_loop_rounds_per_s": [round(r) for r in copies]}


def bench_sync(seconds: float = 2.0, records: int = 50_000, postgres: bool = True) -> dict[str, Any]:
    from edgeloop.tools.testing.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-sync-") as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = _enqueue_rates(workdir, seconds)
        broker = Mosquitto(workdir).start()
        try:
            result.update(_paho_rates(broker.port, min(records, 20_000)))
            result["drain_records_per_s"] = round(_drain_rate(workdir, broker.port, records), 1)
            result["drain_records"] = records
            if postgres:
                result.update(_postgres_rates(workdir, broker.port, max(records, PG_RECORDS)))
            result.update(_drain_over_rtt(workdir, broker.port, min(records, 40_000), 0.05, window=16, per_message=100))
        finally:
            broker.stop(kill=True)
    result["drain_ratio"] = round(result["drain_records_per_s"] / result["paho_qos1_per_s"], 2)
    result["drain_ratio_pipelined"] = round(result["drain_records_per_s"] / result["paho_qos1_pipelined_per_s"], 2)
    return result

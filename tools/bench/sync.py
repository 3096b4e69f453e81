"""``edgeloop bench sync``: the outbox and the link, against a Mosquitto it starts on loopback.

- ``enqueue_single_per_s``: one thread, one durable transaction (FULL sync) per record.
- ``enqueue_group_per_s``: 256 coroutines on one event loop enqueuing at once
  (``enqueue_async``), group-committed by the writer; ``group_commit_ratio`` = group / single.
- ``enqueue_group_threads_per_s``: the same with 16 threads calling ``enqueue``; each caller
  is an OS thread to wake per record, which bounds it well below the coroutines.
- ``drain_records_per_s``: a pre-filled outbox drained by the link until every record is
  acknowledged by the broker and deleted (end to end), timed from the link being online.
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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BODY = {"pad": "x" * 190}  # ~200 bytes of msgpack


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


def _drain_rate(workdir: Path, port: int, records: int, name: str = "drain", **link: Any) -> float:
    from edgeloop.sync.link import LinkConfig, MqttLink
    from edgeloop.sync.outbox import Outbox

    with Outbox(workdir / f"{name}.db", "bench") as box:
        for chunk in range(0, records, 5000):
            box.enqueue_many(("s", BODY) for _ in range(min(5000, records - chunk)))
        link = MqttLink(box, LinkConfig("127.0.0.1", port, fleet="bench", device=name, **link))
        link.start()
        try:
            while link.stats()["state"] != "online":  # connecting is not draining
                time.sleep(0.001)
            start = time.perf_counter()
            while link.stats()["delivered_records"] < records:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            link.stop()
        left = sum(s["rows"] for s in box.stats()["streams"].values())
    if left:
        raise RuntimeError(f"bench sync: {left} records still in the outbox after the drain")
    return records / elapsed


def _drain_over_rtt(workdir: Path, port: int, records: int, rtt_s: float, window: int,
                    per_message: int) -> dict[str, Any]:
    """The drain through the fault proxy with a round trip added: the link must keep its
    window full, so it should approach window x records per message / RTT."""
    from edgeloop.tools.testing.faultproxy import FaultProxy

    proxy = FaultProxy(port, rtt_s=rtt_s)
    try:
        rate = _drain_rate(workdir, proxy.port, records, "rtt", inflight_window=window, batch_records=per_message)
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


def bench_sync(seconds: float = 2.0, records: int = 50_000) -> dict[str, Any]:
    from edgeloop.tools.testing.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-sync-") as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = _enqueue_rates(workdir, seconds)
        broker = Mosquitto(workdir).start()
        try:
            result.update(_paho_rates(broker.port, min(records, 20_000)))
            result["drain_records_per_s"] = round(_drain_rate(workdir, broker.port, records), 1)
            result["drain_records"] = records
            result.update(_drain_over_rtt(workdir, broker.port, min(records, 40_000), 0.05, window=16, per_message=100))
        finally:
            broker.stop(kill=True)
    result["drain_ratio"] = round(result["drain_records_per_s"] / result["paho_qos1_per_s"], 2)
    result["drain_ratio_pipelined"] = round(result["drain_records_per_s"] / result["paho_qos1_pipelined_per_s"], 2)
    return result

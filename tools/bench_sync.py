"""``edgeloop bench sync``: the outbox and the link, against a Mosquitto it starts on loopback.

- ``enqueue_single_per_s``: one thread, one durable transaction (FULL sync) per record.
- ``enqueue_group_per_s``: 16 threads enqueuing at once, group-committed by the writer.
- ``drain_records_per_s``: a pre-filled outbox drained by the link until every record is
  acknowledged by the broker and deleted (end to end).
- ``paho_qos1_per_s``: a bare paho loop publishing the same records one per message at QoS 1,
  in the same run; ``drain_ratio`` = drain / paho.
Bodies are 200 bytes.
"""

from __future__ import annotations

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
        group = sum(counts) / (time.perf_counter() - start)
    return {"enqueue_single_per_s": round(single, 1), "enqueue_group_per_s": round(group, 1),
            "group_commit_ratio": round(group / single, 2)}


def _drain_rate(workdir: Path, port: int, records: int) -> dict[str, float]:
    from edgeloop.sync.link import LinkConfig, MqttLink
    from edgeloop.sync.outbox import Outbox

    with Outbox(workdir / "drain.db", "bench") as box:
        for chunk in range(0, records, 5000):
            box.enqueue_many(("s", BODY) for _ in range(min(5000, records - chunk)))
        link = MqttLink(box, LinkConfig("127.0.0.1", port, fleet="bench", device="bench"))
        start = time.perf_counter()
        link.start()
        try:
            while link.stats()["delivered_records"] < records:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            link.stop()
        left = sum(s["rows"] for s in box.stats()["streams"].values())
    return {"drain_records_per_s": round(records / elapsed, 1), "drain_records": records, "left_in_outbox": left}


def _paho_rate(port: int, messages: int) -> float:
    import msgpack
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    payload = msgpack.packb(BODY)
    done = threading.Event()
    acked = [0]

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        acked[0] += 1
        if acked[0] == messages:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    for _ in range(messages):
        client.publish("bench/paho", payload, qos=1)
    done.wait(120)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return messages / elapsed


def bench_sync(seconds: float = 2.0, records: int = 50_000) -> dict[str, Any]:
    from edgeloop.sync.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-sync-") as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = _enqueue_rates(workdir, seconds)
        broker = Mosquitto(workdir).start()
        try:
            paho = _paho_rate(broker.port, min(records, 20_000))
            result.update(_drain_rate(workdir, broker.port, records))
        finally:
            broker.stop(kill=True)
    result["paho_qos1_per_s"] = round(paho, 1)
    result["drain_ratio"] = round(result["drain_records_per_s"] / paho, 2)
    return result

"""The agent's Prometheus metrics (prometheus-client), on 127.0.0.1 by default.

Figures are read from the agent when scraped (a collector), so serving costs nothing between
scrapes. Energy per inference comes from RAPL (``/sys/class/powercap/intel-rapl:0/energy_uj``)
where it is readable, else from the configured device power; ``edgeloop_energy_source`` says
which. Cost per million inferences follows from the configured price of a kWh.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
LINK_STATES = ("online", "connecting", "offline", "none")


def _rapl_uj() -> int | None:
    try:
        return int(RAPL.read_text())
    except (OSError, ValueError):
        return None


class AgentCollector:
    def __init__(self, agent: Any, device_power_w: float, price_per_kwh: float) -> None:
        self.agent = agent
        self.device_power_w = device_power_w
        self.price_per_kwh = price_per_kwh
        self.started = time.monotonic()
        self.rapl_start = _rapl_uj()

    def energy_per_inference_j(self) -> tuple[float | None, str]:
        n = self.agent.inferences
        if not n:
            return None, "none yet"
        now_uj = _rapl_uj()
        if self.rapl_start is not None and now_uj is not None and now_uj >= self.rapl_start:
            return (now_uj - self.rapl_start) / 1e6 / n, "rapl"
        return self.device_power_w * (time.monotonic() - self.started) / n, "configured device power"

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        labels = ["model"]
        model = a.config.camera.model
        yield CounterMetricFamily("edgeloop_inferences", "inferences served", value=a.inferences)
        lat = np.asarray(a.latencies_ms) / 1000.0 if a.latencies_ms else None
        q = GaugeMetricFamily("edgeloop_inference_latency_seconds", "latency over the last 2,000 inferences",
                              labels=[*labels, "quantile"])
        if lat is not None:
            for quantile in (0.5, 0.95, 0.99):
                q.add_metric([model, str(quantile)], float(np.quantile(lat, quantile)))
        yield q
        jitter = GaugeMetricFamily("edgeloop_inference_jitter_seconds", "mean absolute change between latencies",
                                   labels=labels)
        if lat is not None and lat.size > 1:
            jitter.add_metric([model], float(np.abs(np.diff(lat)).mean()))
        yield jitter
        elapsed = max(time.monotonic() - self.started, 1e-9)
        yield GaugeMetricFamily("edgeloop_inferences_per_second", "since start", value=a.inferences / elapsed)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        if a.inferences:
            worker = a.outbox.cpu_seconds() if a.outbox is not None else 0.0
            yield GaugeMetricFamily("edgeloop_cpu_seconds_per_inference",
                                    "CPU time of the agent and its sync worker / inferences",
                                    value=(usage.ru_utime + usage.ru_stime + worker) / a.inferences)
        energy, source = self.energy_per_inference_j()
        src = GaugeMetricFamily("edgeloop_energy_source", "1 for where the energy figure comes from",
                                labels=["source"])
        src.add_metric([source], 1.0)
        yield src
        if energy is not None:
            yield GaugeMetricFamily("edgeloop_energy_per_inference_joules", "energy / inferences", value=energy)
            yield GaugeMetricFamily("edgeloop_cost_per_million_inferences", "at the configured price of a kWh",
                                    value=energy * 1e6 / 3.6e6 * self.price_per_kwh)
        sync = a.outbox.stats() if a.outbox is not None else None
        if sync is not None:
            rows = GaugeMetricFamily("edgeloop_outbox_rows", "records waiting", labels=["stream"])
            size = GaugeMetricFamily("edgeloop_outbox_bytes", "bytes waiting", labels=["stream"])
            evicted = CounterMetricFamily("edgeloop_outbox_evictions", "records evicted", labels=["stream", "reason"])
            for stream, st in sync["streams"].items():
                rows.add_metric([stream], st["rows"])
                size.add_metric([stream], st["bytes"])
                for reason, count in st["evictions"].items():
                    evicted.add_metric([stream, reason], count)
            yield rows
            yield size
            yield evicted
            items = GaugeMetricFamily("edgeloop_index_items", "vectors in the local retrieval index",
                                      labels=["collection"])
            for name, count in sync["index"].items():
                items.add_metric([name], count)
            yield items
            yield CounterMetricFamily("edgeloop_sync_worker_restarts", "sync worker processes replaced",
                                      value=sync["worker_restarts"])
        link = GaugeMetricFamily("edgeloop_link_state", "1 for the MQTT link's state", labels=["state"])
        state = sync["link"]["state"] if sync is not None and sync["link"] is not None else "none"
        for s in LINK_STATES:
            link.add_metric([s], float(s == state))
        yield link
        if a.ladder is not None:
            st = a.ladder.stats()
            rung = GaugeMetricFamily("edgeloop_ladder_level", "0 is the best rung", labels=["task", "rung"])
            rung.add_metric([st["task"], st["rung"]], st["level"])
            yield rung
            yield CounterMetricFamily("edgeloop_shed", "requests shed", value=st["shed"])
        if a.drift is not None:
            drift = GaugeMetricFamily("edgeloop_drift_psi", "population stability index against the baseline",
                                      labels=["model", "feature"])
            for feature, score in a.drift.scores().items():
                drift.add_metric([model, feature], score)
            yield drift
        if a.loop is not None:
            fig = a.loop.figures()
            if "loop_p99_ms" in fig:
                yield GaugeMetricFamily("edgeloop_mcu_loop_p99_seconds", "window received to command acknowledged",
                                        value=fig["loop_p99_ms"] / 1000.0)
            yield CounterMetricFamily("edgeloop_mcu_commands", "commands acknowledged", value=fig["commands"])


def serve_metrics(agent: Any, port: int, device_power_w: float, price_per_kwh: float) -> tuple[Any, CollectorRegistry]:
    """Start the endpoint on 127.0.0.1:``port`` (0: any free port); returns (server, registry)."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent, device_power_w, price_per_kwh))
    server, _ = start_http_server(port, addr=os.environ.get("EDGELOOP_METRICS_ADDR", "127.0.0.1"), registry=registry)
    return server, registry

"""The agent's Prometheus metrics (prometheus-client) and its ``/status`` JSON, on 127.0.0.1 by
default (``EDGELOOP_METRICS_ADDR`` for another address).

- Latency is a histogram with buckets for millisecond answers (``rate()`` and
  ``histogram_quantile()`` work on it), kept by the agent (``histogram.py``) and exposed here;
  answers, alerts, CPU time, energy, drops and restarts are counters, never "since start" rates.
- Figures that live elsewhere (the outbox in the sync worker, the ladders, the stages) are read
  when scraped, by a collector; their series are always there (a drained stream reads 0).
- Energy comes from RAPL (``/sys/class/powercap/intel-rapl:0/energy_uj``) where it is readable,
  else from the configured device power; ``edgeloop_energy_source`` says which.
"""

from __future__ import annotations

import json
import os
import resource
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily,
                                   Metric)

from .histogram import BUCKETS_S

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
LINK_STATES = ("online", "connecting", "offline", "none")


def _rapl_uj() -> int | None:
    try:
        return int(RAPL.read_text())
    except (OSError, ValueError):
        return None


class AgentCollector:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.started = time.monotonic()
        self.rapl_start = _rapl_uj()

    def energy_j(self) -> tuple[float, str]:
        """Energy used since start, and where the figure comes from."""
        now_uj = _rapl_uj()
        if self.rapl_start is not None and now_uj is not None and now_uj >= self.rapl_start:
            return (now_uj - self.rapl_start) / 1e6, "rapl"
        return self.agent.config.device_power_w * (time.monotonic() - self.started), "configured device power"

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        c = a.config
        yield InfoMetricFamily("edgeloop_agent", "the agent", value={"device": c.device, "fleet": c.fleet,
                                                                     "version": _version()})
        yield from self._answers()
        yield CounterMetricFamily("edgeloop_alerts", "alert events raised", value=a.alerts)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = CounterMetricFamily("edgeloop_cpu_seconds", "CPU time", labels=["process"])
        cpu.add_metric(["agent"], usage.ru_utime + usage.ru_stime)
        cpu.add_metric(["sync_worker"], a.worker.cpu_seconds() if a.worker is not None else 0.0)
        yield cpu
        energy, source = self.energy_j()
        src = GaugeMetricFamily("edgeloop_energy_source", "1 for where the energy figure comes from",
                                labels=["source"])
        src.add_metric([source], 1.0)
        yield src
        yield CounterMetricFamily("edgeloop_energy_joules", "energy used since start", value=energy)
        if a.inferences:
            per = energy / a.inferences
            yield GaugeMetricFamily("edgeloop_energy_per_inference_joules", "energy / answers, since start",
                                    value=per)
            yield GaugeMetricFamily("edgeloop_cost_per_million_inferences", "at the configured price of a kWh",
                                    value=per * 1e6 / 3.6e6 * c.price_per_kwh)
        yield from self._engine()
        yield from self._stages()
        yield from self._sinks()
        yield from self._sync()
        yield from self._ladders()
        yield from self._mcu_and_mqtt()
        yield from self._rollout()

    def _rollout(self) -> Iterator[Metric]:
        """The rollout's state (one series per state, 1 for the current one), the download's
        progress (bytes, rate, ETA) and the attempts of the rollout under way."""
        from edgeloop.sync.rollout_state import STATES

        driver = getattr(self.agent, "rollout", None)
        if driver is None:
            return
        s = driver.store.state
        state = GaugeMetricFamily("edgeloop_rollout_state", "1 for the rollout's current state", labels=["state"])
        for name in STATES:
            state.add_metric([name], 1.0 if s.state == name else 0.0)
        yield state
        yield InfoMetricFamily("edgeloop_rollout", "the versions in the slots",
                               value={"active": s.serving_version or "", "standby": s.standby_version or "",
                                      "target": s.target or ""})
        yield GaugeMetricFamily("edgeloop_rollout_attempts", "downloads started for the rollout", value=s.attempts)
        progress = driver.progress
        have = progress.have if progress is not None else 0
        length = progress.length if progress is not None else 0
        yield GaugeMetricFamily("edgeloop_rollout_download_bytes", "bytes of the bundle on disk", value=have)
        yield GaugeMetricFamily("edgeloop_rollout_download_length_bytes", "bytes of the bundle", value=length)
        yield GaugeMetricFamily("edgeloop_rollout_download_speed_bytes",
                                "the download's current speed, bytes a second",
                                value=progress.rate_bps if progress is not None else 0.0)
        eta = progress.eta_s() if progress is not None else None
        yield GaugeMetricFamily("edgeloop_rollout_download_eta_seconds", "time left at the current rate (0: none)",
                                value=eta or 0.0)
        yield CounterMetricFamily("edgeloop_rollout_fetched_bytes", "bytes fetched for the rollout (resends too)",
                                  value=s.bytes + (progress.fetched if progress is not None else 0))

    def _answers(self) -> Iterator[Metric]:
        labels = ["task", "slot", "rung"]
        hist = HistogramMetricFamily("edgeloop_inference_latency_seconds", "served latency, input in to answer",
                                     labels=labels)
        answers = CounterMetricFamily("edgeloop_inferences", "answers served", labels=labels)
        for key, (cumulative, count, total) in self.agent.latency.snapshot().items():
            bounds = [repr(b) for b in BUCKETS_S] + ["+Inf"]
            hist.add_metric(list(key), list(zip(bounds, cumulative)), total)
            answers.add_metric(list(key), count)
        yield hist
        yield answers

    def _engine(self) -> Iterator[Metric]:
        stats = getattr(self.agent.engine, "stats", None)
        events = stats()["fallback_events"] if callable(stats) else []
        fb = CounterMetricFamily("edgeloop_delegate_fallbacks", "models running on the CPU variant because "
                                 "their delegate was missing or failed", labels=["model", "wanted"])
        counts: dict[tuple[str, str], int] = {}
        for e in events:
            counts[(e["model"], e["wanted"])] = counts.get((e["model"], e["wanted"]), 0) + 1
        for (model, wanted), n in counts.items():
            fb.add_metric([model, wanted], n)
        yield fb

    def _stages(self) -> Iterator[Metric]:
        sup = self.agent.supervisor
        up = GaugeMetricFamily("edgeloop_stage_up", "1 while the stage runs", labels=["stage"])
        restarts = CounterMetricFamily("edgeloop_stage_restarts", "stages started again after failing",
                                       labels=["stage"])
        for name, st in (sup.health().items() if sup is not None else []):
            up.add_metric([name], float(st["state"] == "running"))
            restarts.add_metric([name], st["restarts"])
        yield up
        yield restarts

    def _sinks(self) -> Iterator[Metric]:
        from edgeloop.sync.worker import STREAM_POLICIES

        records = self.agent.records
        st = records.stats() if records is not None else {"streams": {}, "pending": 0, "failed_batches": 0}
        streams = {s: {"accepted": 0, "dropped": 0, "confirmed": 0} for s in (*STREAM_POLICIES, "mcu-events")}
        streams.update(st["streams"])
        accepted = CounterMetricFamily("edgeloop_records_accepted", "records queued by the pipeline", labels=["stream"])
        dropped = CounterMetricFamily("edgeloop_records_dropped", "records dropped by a full queue's rule",
                                      labels=["stream"])
        confirmed = CounterMetricFamily("edgeloop_records_confirmed", "records confirmed durable in the outbox",
                                        labels=["stream"])
        for stream, s in streams.items():
            accepted.add_metric([stream], s["accepted"])
            dropped.add_metric([stream], s["dropped"])
            confirmed.add_metric([stream], s["confirmed"])
        yield accepted
        yield dropped
        yield confirmed
        yield GaugeMetricFamily("edgeloop_records_pending", "records accepted, not yet confirmed durable",
                                value=st["pending"])
        yield CounterMetricFamily("edgeloop_outbox_failed_batches", "batches the outbox refused (full disk, a "
                                  "worker restart); retried", value=st["failed_batches"])

    def _sync(self) -> Iterator[Metric]:
        from edgeloop.sync.worker import STREAM_POLICIES

        a = self.agent
        try:
            sync = a.worker.stats() if a.worker is not None else None
        except Exception:  # a worker being replaced: its series come back at the next scrape
            sync = None
        rows = GaugeMetricFamily("edgeloop_outbox_rows", "records waiting", labels=["stream"])
        size = GaugeMetricFamily("edgeloop_outbox_bytes", "bytes waiting", labels=["stream"])
        evicted = CounterMetricFamily("edgeloop_outbox_evictions", "records evicted", labels=["stream", "reason"])
        streams = {s: {"rows": 0, "bytes": 0, "evictions": {}} for s in STREAM_POLICIES}
        if sync is not None:
            streams.update(sync["streams"])
        for stream, st in streams.items():
            rows.add_metric([stream], st["rows"])
            size.add_metric([stream], st["bytes"])
            for reason, count in st["evictions"].items():
                evicted.add_metric([stream, reason], count)
        yield rows
        yield size
        yield evicted
        items = GaugeMetricFamily("edgeloop_index_items", "vectors in the local retrieval index", labels=["collection"])
        for name, count in (sync["index"].items() if sync else []):
            items.add_metric([name], count)
        yield items
        yield CounterMetricFamily("edgeloop_sync_worker_restarts", "sync worker processes replaced",
                                  value=a.worker.restarts if a.worker is not None else 0)
        link = GaugeMetricFamily("edgeloop_link_state", "1 for the MQTT link's state", labels=["state"])
        state = sync["link"]["state"] if sync is not None and sync["link"] is not None else "none"
        for s in LINK_STATES:
            link.add_metric([s], float(s == state))
        yield link
        if sync is not None and sync["link"] is not None:
            link_stats = sync["link"]
            yield CounterMetricFamily("edgeloop_link_delivered_records",
                                      "records the regional store acknowledged as committed (then deleted)",
                                      value=link_stats["delivered_records"])
            yield GaugeMetricFamily("edgeloop_link_awaiting_commit_records",
                                    "records the broker took that await the regional commit ack",
                                    value=link_stats.get("awaiting_commit", 0))
            yield GaugeMetricFamily("edgeloop_link_awaiting_commit_seconds",
                                    "how long records have waited with no regional commit acknowledged",
                                    value=sync.get("awaiting_commit_s", 0.0))
            yield CounterMetricFamily("edgeloop_link_resent_records",
                                      "records sent again because their commit did not come in time",
                                      value=link_stats.get("resent_records", 0))
            yield GaugeMetricFamily("edgeloop_link_ack_subscription_granted",
                                    "1 when the broker granted the commit-ack subscription (0: pending or refused)",
                                    value=float(link_stats.get("ack_subscription") == "granted"))

    def _ladders(self) -> Iterator[Metric]:
        part = self.agent.camera
        level = GaugeMetricFamily("edgeloop_ladder_level", "0 is the best rung", labels=["task", "slot"])
        rung = GaugeMetricFamily("edgeloop_ladder_rung", "1 for the rung serving", labels=["task", "slot", "rung"])
        shed = CounterMetricFamily("edgeloop_shed", "requests shed", labels=["task", "slot"])
        steps = CounterMetricFamily("edgeloop_ladder_transitions", "steps down and up", labels=["task", "slot"])
        for slot, ladder in (part.ladders.items() if part is not None else []):
            st = ladder.stats()
            level.add_metric([part.task, slot], st["level"])
            for r in ladder.rungs:
                rung.add_metric([part.task, slot, r.name], float(r.name == st["rung"]))
            shed.add_metric([part.task, slot], st["shed"])
            steps.add_metric([part.task, slot], st["transitions"])
        yield level
        yield rung
        yield shed
        yield steps
        drift = GaugeMetricFamily("edgeloop_drift_psi", "population stability index against the baseline",
                                  labels=["model", "feature"])
        if part is not None and part.drift is not None:
            for feature, score in part.drift.scores().items():
                drift.add_metric([part.task, feature], score)
        yield drift

    def _mcu_and_mqtt(self) -> Iterator[Metric]:
        a = self.agent
        loop = a.loop
        if loop is not None:
            fig = loop.figures()
            yield CounterMetricFamily("edgeloop_mcu_windows", "sensor windows received", value=fig["windows"])
            yield CounterMetricFamily("edgeloop_mcu_commands", "commands acknowledged", value=fig["commands"])
            if "loop_p99_ms" in fig:
                yield GaugeMetricFamily("edgeloop_mcu_loop_latency_p99_seconds",
                                        "window received to command acknowledged, p99", value=fig["loop_p99_ms"] / 1e3)
        r = a.responder
        if r is not None:
            req = CounterMetricFamily("edgeloop_requests", "MQTT inference requests", labels=["outcome"])
            req.add_metric(["answered"], r.answered)
            req.add_metric(["failed"], r.failed)
            req.add_metric(["unanswerable"], r.unanswerable)
            req.add_metric(["rate_limited"], r.rate_limited)
            yield req
        if a.desired is not None:
            yield CounterMetricFamily("edgeloop_desired_config_rejected", "desired documents rejected",
                                      value=a.desired.rejected)
            if a.desired.gate is not None:
                yield CounterMetricFamily("edgeloop_desired_signature_refused",
                                          "desired documents refused at the signature check (unsigned, foreign "
                                          "key, altered, another topic, a replay)", value=a.desired.gate.refused)
        errors = CounterMetricFamily("edgeloop_mqtt_callback_errors", "MQTT callbacks that failed (logged)",
                                     labels=["part"])
        for part in (a.desired, a.responder):
            if part is not None:
                errors.add_metric([part.guard.part], part.guard.errors)
        yield errors


def _version() -> str:
    from .status import package_version

    return package_version()


def serve(agent: Any, port: int) -> ThreadingHTTPServer:
    """``/metrics`` (Prometheus text) and ``/status`` (JSON) on 127.0.0.1:``port`` (0: a free port)."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, kind = generate_latest(registry), CONTENT_TYPE_LATEST
            elif path == "/status":
                body, kind = json.dumps(agent.status(), default=str).encode(), "application/json"
            else:
                self.send_error(404, "edgeloop serves /metrics and /status")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not log lines
            pass

    server = ThreadingHTTPServer((os.environ.get("EDGELOOP_METRICS_ADDR", "127.0.0.1"), port), Handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server

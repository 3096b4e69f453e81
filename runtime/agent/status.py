"""What the agent says about itself: ``agent_status`` (the dict behind ``/status``, the status
line and ``edgeloop status``) and ``status_line``."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("edgeloop")
    except Exception:  # not installed as a distribution (a source tree on the path)
        return "unknown"


def _state(agent: Any) -> str:
    if agent.stopping.is_set():
        return "stopping"
    if agent.supervisor is not None and agent.supervisor.unhealthy():
        return "degraded"
    if not agent.first_result.is_set():
        return "starting"
    return "running"


def agent_status(agent: Any, fast: bool = False) -> dict[str, Any]:
    c = agent.config
    out: dict[str, Any] = {
        "state": _state(agent), "pid": os.getpid(), "version": package_version(),
        "uptime_s": round(time.time() - agent.started_at, 1), "device": c.device, "fleet": c.fleet,
        "group": c.group or None, "broker": c.broker or None,
        "inferences": agent.inferences, "alerts": agent.alerts,
        "served_by": {f"{slot}/{rung}": n for (slot, rung), n in sorted(agent.served_by.items())},
    }
    lat = list(agent.latencies_ms)
    if lat:
        p50, p95, p99 = np.percentile(np.asarray(lat), [50, 95, 99])
        out.update(p50_ms=round(float(p50), 3), p95_ms=round(float(p95), 3), p99_ms=round(float(p99), 3))
    part = agent.camera
    models: dict[str, Any] = {}
    if part is not None:
        for slot, ladder in part.ladders.items():
            model = part.models[slot]
            st = ladder.stats()
            models[slot] = {"version": model.entry.version, "rung": st["rung"], "level": st["level"],
                            "delegate": model.delegate.kind if model.delegate else None, "fallback": model.fallback}
        out["rung"] = part.ladder.stats()["rung"]
        out["route"] = {task: {"primary": r.primary, "canary": list(r.canary) if r.canary else None,
                               "shadow": list(r.shadow) if r.shadow else None}
                        for task, r in part.router.routes().items()} if part.router else {}
        out["shadow"] = part.router.shadow_report() if part.router else {}
        out["drift"] = {k: round(v, 3) for k, v in part.drift.scores().items()} if part.drift else {}
    else:
        out.update(rung=None, route={}, shadow={}, drift={})
    out["models"] = models
    stats = getattr(agent.engine, "stats", None)
    engine = stats() if callable(stats) else {"fallbacks": 0, "fallback_events": []}
    out["fallbacks"] = engine["fallback_events"]  # a delegate missing: the CPU variant runs
    out["stages"] = agent.supervisor.health() if agent.supervisor is not None else {}
    errors = sorted(((s["last_error_at"] or 0, f"{name}: {s['last_error']}") for name, s in out["stages"].items()
                     if s["last_error"]), reverse=True)
    out["last_error"] = errors[0][1] if errors else (agent.last_error or None)
    out["sinks"] = {"outbox": agent.records.stats() if agent.records else None,
                    "index": agent.vectors.stats() if agent.vectors else None}
    r = agent.responder
    out["requests"] = {"answered": r.answered, "failed": r.failed, "unanswerable": r.unanswerable,
                       "rate_limited": r.rate_limited} if r else None
    d = agent.desired
    out["desired"] = ({"status": d.last_state.get("status"), "reason": d.last_state.get("reason"),
                       "rejected": d.rejected, "layers": sorted(d.layers), "signed": d.gate is not None,
                       "refused_signatures": d.gate.refused if d.gate else None}
                      if d is not None else None)
    rollout = agent.rollout
    out["rollout"] = rollout.reported() if rollout is not None else None
    loop = agent.loop
    if loop is not None:
        out["mcu"] = {"state": agent.mcu.state, "windows": loop.windows, "commands": loop.commands,
                      **{k: v for k, v in loop.figures().items() if k.startswith("loop_p")}}
    if not fast and agent.worker is not None:
        try:
            sync = agent.worker.stats()
        except Exception as exc:  # the worker being replaced: said, not raised into the caller
            out["sync_error"] = f"{type(exc).__name__}: {exc}"
        else:
            streams = sync["streams"]
            out.update(outbox_rows=sum(s["rows"] for s in streams.values()),
                       outbox_bytes=sum(s["bytes"] for s in streams.values()), outbox_streams=streams,
                       link=sync["link"]["state"] if sync["link"] is not None else "none (records wait in the outbox)",
                       link_stats=sync["link"], index_items=sum(sync["index"].values()), index=sync["index"],
                       worker_restarts=sync["worker_restarts"], salvage=sync.get("salvage"), epoch=sync.get("epoch"),
                       awaiting_commit=sync.get("awaiting_commit", 0),
                       awaiting_commit_s=sync.get("awaiting_commit_s", 0.0))
    return out


def status_line(s: dict[str, Any]) -> str:
    """One line: rate and latency, rung, outbox, link, alerts, drift, MCU, trouble."""
    rate = f"{s['rate']:.1f} inf/s  " if "rate" in s else ""
    line = (f"edgeloop: {rate}{s['inferences']} inferences  p50 {s.get('p50_ms', '-')} p95 {s.get('p95_ms', '-')} "
            f"p99 {s.get('p99_ms', '-')} ms | rung {s['rung']}")
    if "outbox_rows" in s:
        line += f" | outbox {s['outbox_rows']} rows {s['outbox_bytes'] / 1024:.0f} KB | link {s['link']}"
    line += f" | alerts {s['alerts']}"
    if s.get("drift"):
        line += f" | drift psi {max(s['drift'].values()):.2f}"
    mcu = s.get("mcu")
    if mcu:
        line += f" | mcu {mcu.get('state')} {mcu.get('windows')} windows {mcu.get('commands')} commands"
        if "loop_p99_ms" in mcu:
            line += f" loop p99 {mcu['loop_p99_ms']} ms"
    r = s.get("rollout")
    if r and r.get("state") not in (None, "idle"):
        line += f" | rollout {r['state']} {r.get('target')}"
        p = r.get("progress")
        if p and p.get("length"):
            line += f" {100 * p['have'] / p['length']:.0f}%"
            if p.get("eta_s") is not None:
                line += f" eta {p['eta_s']:.0f} s"
        if r.get("state") in ("rolled_back", "failed") and r.get("reason"):
            line += f" ({r['reason'][:60]})"
    if s.get("fallbacks"):
        line += f" | {len(s['fallbacks'])} delegate fallback(s)"
    if s["state"] != "running":
        line += f" | {s['state']}"
        if s.get("last_error"):
            line += f": {s['last_error'][:120]}"
    return line

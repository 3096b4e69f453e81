"""``edgeloop status``: the running agent, as ``systemctl status`` shows a unit: state, uptime,
device and fleet, broker and link, models and rungs, fallbacks, outbox, the last error. Read
from the agent's ``/status`` on loopback (the port of ``EDGELOOP_METRICS_PORT``, else 9464).

Exit codes as systemctl's: 0 running, 3 not running (nothing answers), 2 a usage error or an
address that answers but is not an edgeloop agent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from edgeloop.runtime.errors import ConfigError

EXIT_NOT_RUNNING = 3


def package_version() -> str:
    from edgeloop.runtime.agent.status import package_version as version

    return version()


class NotRunning(ConfigError):
    """Nothing answers at the address: the agent is not running (or listens elsewhere)."""


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("status", help="the running agent's state and figures (exit 3 when it is not running)")
    p.add_argument("--url", help="the agent's address, or its /metrics or /status URL "
                   "(default http://127.0.0.1:$EDGELOOP_METRICS_PORT, else port 9464)")
    p.add_argument("--json", action="store_true", help="the whole status as JSON")
    p.set_defaults(handler=cmd_status)


def status_url(url: str | None) -> str:
    if not url:
        port = os.environ.get("EDGELOOP_METRICS_PORT", "9464")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"EDGELOOP_METRICS_PORT: '{port}' is not a port the agent listens on",
                              "give --url, or the agent's metrics port")
        return f"http://127.0.0.1:{port}/status"
    if "://" not in url:
        url = "http://" + url
    base = url.rstrip("/")
    for suffix in ("/metrics", "/status"):
        base = base.removesuffix(suffix)
    return base + "/status"


def read_status(url: str | None) -> dict[str, Any]:
    """The agent's status dict; NotRunning when nothing answers, ConfigError when what answers
    is not an edgeloop agent."""
    import urllib.error
    import urllib.request

    target = status_url(url)
    try:
        with urllib.request.urlopen(target, timeout=5) as response:
            body = response.read(4 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"{target} answered HTTP {exc.code}: not an edgeloop agent",
                          "give the agent's metrics address (edgeloop run prints it), e.g. --url 127.0.0.1:9464") \
            from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotRunning(f"no agent answers at {target} ({reason})",
                         "start it with `edgeloop run`, or give --url") from exc
    except ValueError as exc:
        raise ConfigError(f"--url: '{url}' is not a URL ({exc})", "give e.g. --url 127.0.0.1:9464") from exc
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if not isinstance(status, dict) or "state" not in status or "device" not in status:
        raise ConfigError(f"{target} is not an edgeloop agent's status", "give the agent's metrics address")
    return status


def _human(s: dict[str, Any]) -> str:
    lines = [f"edgeloop agent '{s['device']}' (fleet {s['fleet']}{', group ' + s['group'] if s.get('group') else ''})"]
    lines.append(f"     State: {s['state']} since {s['uptime_s']:.0f} s (pid {s['pid']}, version {s['version']})")
    link = s.get("link", "?")
    lines.append(f"    Broker: {s.get('broker') or 'none (records wait in the outbox)'}; link {link}")
    for slot, m in s.get("models", {}).items():
        fb = f"; fallback: {m['fallback']}" if m.get("fallback") else ""
        lines.append(f"     Model: {slot} {m['version']} on rung {m['rung']} (level {m['level']}){fb}")
    lines.append(f"   Answers: {s['inferences']}  p50 {s.get('p50_ms', '-')} p99 {s.get('p99_ms', '-')} ms  "
                 f"alerts {s['alerts']}")
    for f in s.get("fallbacks", []):
        lines.append(f"  Fallback: {f['model']} wanted {f['wanted']}, runs on {f['used']}: {f['reason']}")
    sinks = (s.get("sinks") or {}).get("outbox") or {}
    lines.append(f"    Outbox: {s.get('outbox_rows', '?')} rows, {s.get('outbox_bytes', 0) / 1024:.0f} KB; "
                 f"{sinks.get('pending', 0)} records not yet durable")
    if s.get("awaiting_commit_s"):
        lines.append(f"  Regional: {s.get('awaiting_commit', 0)} records sent, no regional commit acknowledged for "
                     f"{s['awaiting_commit_s']:.0f} s (kept until one is; is a receiver of fleet {s['fleet']} up?)")
    sub = (s.get("link_stats") or {}).get("ack_subscription", "")
    if sub.startswith("refused"):
        lines.append(f"  Regional: the commit-ack subscription was {sub}; no record can be committed "
                     "(check the broker's ACL for this device)")
    if s.get("mcu"):
        m = s["mcu"]
        lines.append(f"       MCU: {m['state']}, {m['windows']} windows, {m['commands']} commands")
    bad = {n: st for n, st in s.get("stages", {}).items() if st["state"] != "running"}
    stages = ", ".join(f"{n} {st['state']}" for n, st in bad.items()) or "all running"
    lines.append(f"    Stages: {stages}")
    if s.get("desired") and s["desired"].get("status") == "rejected":
        lines.append(f"   Desired: last document rejected: {s['desired']['reason']}")
    lines.append(f"Last error: {s.get('last_error') or 'none'}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from .common import print_json

    try:
        status = read_status(args.url)
    except NotRunning as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        if args.json:
            print_json({"state": "not running", "error": str(exc)})
        return EXIT_NOT_RUNNING
    if args.json:
        print_json(status)
    else:
        print(_human(status))
    return 0

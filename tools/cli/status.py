"""``edgeloop status``: the running agent's figures, read from its metrics endpoint on loopback."""

from __future__ import annotations

import argparse
import urllib.request
from typing import Any


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("status", help="the running agent's figures (from its metrics endpoint)")
    p.add_argument("--url", default="http://127.0.0.1:9464/metrics", help="the agent's metrics (default port 9464)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)


def read_status(url: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    from edgeloop.runtime.errors import ConfigError

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        raise ConfigError(f"no agent answers at {url} ({exc})", "start it with `edgeloop run`, or give --url") from exc
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.name.removeprefix("edgeloop_")
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{key}{{{labels}}}" if labels else key] = sample.value
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from .common import print_json

    status = read_status(args.url)
    if args.json:
        print_json(status)
    else:
        for key, value in status.items():
            if key.startswith(("python_", "process_")):
                continue
            print(f"{key:<60} {value:g}")
    return 0

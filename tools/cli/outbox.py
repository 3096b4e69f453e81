"""``edgeloop outbox stats``: what the device's outbox holds, per stream."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("outbox", help="the durable outbox: stats, drain")
    osub = p.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    sp = osub.add_parser("stats", help="per stream: rows, bytes, oldest record, evictions")
    sp.add_argument("--db", type=Path, required=True, help="the outbox file")
    sp.add_argument("--device", default="local", help="device name (only labels the output)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(handler=cmd_stats)
    from .regional import register_drain

    register_drain(osub)


def cmd_stats(args: argparse.Namespace) -> int:
    from edgeloop.runtime.errors import ConfigError
    from edgeloop.sync.outbox import Outbox

    from .common import print_json

    if not args.db.exists():
        raise ConfigError(f"--db: {args.db} does not exist", "give the path of the device's outbox file")
    with Outbox(args.db, args.device) as box:
        stats = box.stats()
    if args.json:
        print_json(stats)
        return 0
    if stats["salvage"]:
        print(f"damaged file kept as {stats['salvage']['quarantined']}: {stats['salvage']['salvaged']} records salvaged")
    print(f"{'stream':<20} {'rows':>8} {'bytes':>12}  {'oldest':<20} evictions")
    for name, st in sorted(stats["streams"].items()):
        oldest = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["oldest"])) if st["oldest"] else "-"
        ev = ", ".join(f"{k}: {v}" for k, v in st["evictions"].items()) or "-"
        print(f"{name:<20} {st['rows']:>8} {st['bytes']:>12}  {oldest:<20} {ev}")
    return 0

"""``edgeloop regional``: the regional receiver; ``edgeloop regional stats``: what it holds.
``edgeloop outbox drain``: send a device's outbox to a broker by hand."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

from edgeloop.runtime.errors import ConfigError

from .common import broker_flags, broker_from_args


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("regional", help="the regional receiver (run until stopped), its stats, or the central export")
    p.add_argument("action", nargs="?", choices=("run", "stats", "export", "acl"), default="run")
    p.add_argument("--db", metavar="FILE|postgresql://…",
                   help="the regional store: a SQLite file (one site), or a PostgreSQL URL (run, stats, export)")
    a = p.add_argument_group("acl: the broker's ACL from the PKI inventory (edgeloop pki)")
    a.add_argument("--pki", type=Path, help="the CA's folder")
    a.add_argument("--acl-out", type=Path, help="the ACL file to write (replaced whole)")
    a.add_argument("--listener-port", type=int, default=8883, help="the TLS listener printed for mosquitto.conf")
    p.add_argument("--share", help="MQTT 5 shared-subscription group, for several receivers (run)")
    p.add_argument("--client-id", help="the broker session's id (default: from the fleet, --share and the host "
                                       "name; several receivers on one host need one each) (run)")
    p.add_argument("--json", action="store_true", help="(stats)")
    p.add_argument("--respond", action="append", default=[], metavar="TASK=MODEL",
                   help="also answer the devices' offloaded TASK requests with MODEL (repeatable; run)")
    p.add_argument("--answer-nearest", action="store_true",
                   help="also answer the devices' nearest-neighbour queries from the regional index "
                        "(PostgreSQL with pgvector; run)")
    e = p.add_argument_group("export: aggregated, de-identified Parquet for the central cloud")
    e.add_argument("--out", type=Path, help="the folder that gets {region}/{start}-{end}.parquet")
    e.add_argument("--region", help="this region's name")
    e.add_argument("--secret-file", type=Path, help="the region's secret for the keyed hash of device ids (mode 600)")
    e.add_argument("--window-start", type=float, help="unix time of the window (default: the last closed one)")
    e.add_argument("--window-s", type=float, default=3600.0, help="window length (default 3600)")
    e.add_argument("--bucket-s", type=float, default=300.0, help="time bucket (default 300)")
    e.add_argument("--k", type=int, default=5, help="groups with fewer devices are left out (default 5)")
    e.add_argument("--grace-s", type=float, default=300.0, help="a window closes this long after its end (default 300)")
    broker_flags(p)
    common(p)
    p.set_defaults(handler=cmd_regional)


def _acl(args: argparse.Namespace, print_json: Any) -> int:
    from edgeloop.runtime.durable_file import replace_durably
    from edgeloop.tools.pki.acl import acl_text, listener_conf
    from edgeloop.tools.pki.authority import Authority

    if not args.pki or not args.acl_out:
        raise ConfigError("regional acl: --pki and --acl-out are required", "give the CA's folder and the ACL's path")
    inventory = Authority(args.pki).inventory()
    replace_durably(args.acl_out, acl_text(inventory).encode())
    print_json({"acl": str(args.acl_out), "devices": len(inventory["devices"]), "services": len(inventory["services"]),
                "mosquitto.conf": listener_conf(args.listener_port, str(args.pki.resolve()),
                                                str(args.acl_out.resolve())),
                "next": "reload the broker (SIGHUP) to take a changed ACL"})
    return 0


def register_drain(osub: Any) -> None:
    d = osub.add_parser("drain", help="send the outbox to a broker until it is empty")
    d.add_argument("--db", type=Path, required=True, help="the outbox file")
    d.add_argument("--device", required=True)
    broker_flags(d, required=True)
    d.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)")
    d.set_defaults(handler=cmd_drain)


def cmd_regional(args: argparse.Namespace) -> int:
    from edgeloop.sync.receiver import RegionalReceiver
    from edgeloop.sync.store import open_store

    from .common import print_json

    if args.action == "acl":
        return _acl(args, print_json)
    if not args.db:
        raise ConfigError(f"regional {args.action}: --db is required", "give a SQLite file or a postgresql:// URL")
    is_file = not args.db.startswith(("postgresql://", "postgres://"))
    if args.action == "stats":
        if is_file and not Path(args.db).exists():
            raise ConfigError(f"--db: {args.db} does not exist", "give the regional database file")
        store = open_store(args.db)
        stats = store.stats()
        store.close()
        if args.json:
            print_json(stats)
        else:
            for device, d in sorted(stats["devices"].items()):
                print(f"{device:<24} records {d['records']:>8}  seq gaps {d['gaps']:>6}  "
                      f"duplicates dropped {d['duplicates_dropped']}  spoofed sent {d['spoofed']}")
                for epoch, e in sorted(d["epochs"].items()) if len(d["epochs"]) > 1 else ():
                    print(f"    epoch {epoch or '(none)':<18} seq {e['first_seq']}-{e['last_seq']}  gaps {e['gaps']}")
            print(f"malformed payloads kept aside: {stats['malformed']}; spoofed envelopes kept aside: "
                  f"{stats['spoofed']}")
        return 0
    if args.action == "export":
        return _export(args, is_file, print_json)
    if not args.broker:
        raise ConfigError("--broker is required to run the receiver", "add --broker HOST[:PORT]")
    broker = broker_from_args(args)
    responder, engine = _responder(args, broker)
    store = open_store(args.db)
    receiver = RegionalReceiver(store, broker, fleet=args.fleet, share=args.share, client_id=args.client_id)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    receiver.start()
    shown = args.db if is_file else args.db.split("@")[-1]  # never a password on the console
    print(f"regional: receiving {receiver.subscription} from {broker.address} into {shown} "
          f"(client id {receiver.client_id})", flush=True)
    if receiver.subscribed.wait(10):
        print("regional: subscribed", flush=True)
    else:
        print(f"regional: not subscribed yet (is the broker at {broker.address} up?); trying on", flush=True)
    if responder is not None:
        responder.start()
        print(f"regional: answering {', '.join([*responder.models, *responder.queries])} requests", flush=True)
    stop.wait()
    receiver.stop()
    store.close()
    if responder is not None:
        responder.stop()
        if engine is not None:
            engine.close()
    return 0


def _export(args: argparse.Namespace, is_file: bool, print_json: Any) -> int:
    from edgeloop.sync.central_export import export_window, last_closed_window, read_secret
    from edgeloop.sync.store import open_store

    for flag, value in (("--out", args.out), ("--region", args.region), ("--secret-file", args.secret_file)):
        if not value:
            raise ConfigError(f"{flag} is required to export", "regional export --db … --out DIR --region NAME "
                                                               "--secret-file FILE")
    if is_file and not Path(args.db).exists():
        raise ConfigError(f"--db: {args.db} does not exist", "give the regional database file")
    secret = read_secret(args.secret_file)
    start = args.window_start if args.window_start is not None else last_closed_window(args.window_s, args.grace_s)
    store = open_store(args.db)
    try:
        done = export_window(store, args.out, args.region, secret, start, args.window_s, args.bucket_s, args.k,
                             args.grace_s)
    finally:
        store.close()
    figures = {"path": str(done.path), "outcome": done.outcome, "rows": done.rows, "records": done.records,
               "suppressed_groups": done.suppressed_groups, "suppressed_records": done.suppressed_records}
    if args.json:
        print_json(figures)
    else:
        print(f"regional export: {done.path} {done.outcome}: {done.rows} rows ({done.records} records); "
              f"{done.suppressed_groups} group(s) of fewer than {args.k} devices left out "
              f"({done.suppressed_records} records)")
    return 0


def _responder(args: argparse.Namespace, broker: Any) -> tuple[Any, Any]:
    """The offload responder for ``--respond TASK=MODEL``, or (None, None)."""
    if not args.respond and not args.answer_nearest:
        return None, None
    from edgeloop.sync.offload import Responder

    from .common import engine_from_args

    queries = {}
    if args.answer_nearest:
        from edgeloop.sync.regional_index import nearest_answerer
        from edgeloop.sync.store import open_store

        if not args.db.startswith(("postgresql://", "postgres://")):
            raise ConfigError("--answer-nearest: the regional index is on PostgreSQL with pgvector",
                              "give --db postgresql://…")
        queries["nearest"] = nearest_answerer(open_store(args.db))  # a connection of its own

    pairs = []
    for item in args.respond:
        task, sep, model = item.partition("=")
        if not sep or not task or not model:
            raise ConfigError(f"--respond: '{item}' is not TASK=MODEL", "for example --respond classify=mobilenet_v2")
        pairs.append((task, model))
    engine = engine_from_args(args) if pairs else None
    models = {task: (lambda source, m=engine.load(model): m.classify(source).to_dict()) for task, model in pairs}
    client = f"{args.client_id}-responder" if args.client_id else "edgeloop-responder"
    return Responder(broker, args.fleet, models, share=args.share, client_id=client, queries=queries), engine


def cmd_drain(args: argparse.Namespace) -> int:
    from edgeloop.sync.link import LinkConfig, MqttLink
    from edgeloop.sync.outbox import Outbox

    from edgeloop.sync.topics import check_name

    b = broker_from_args(args)
    check_name("--device", args.device)
    if not args.db.exists():
        raise ConfigError(f"--db: {args.db} does not exist", "give the path of the device's outbox file")
    with Outbox(args.db, args.device) as box:
        link = MqttLink(box, LinkConfig(b.host, b.port, fallbacks=b.fallbacks, fleet=args.fleet, device=args.device,
                                        username=b.username, password=b.password, ca_file=b.ca_file,
                                        cert_file=b.cert_file, key_file=b.key_file))
        link.start()
        deadline = time.monotonic() + args.timeout
        try:
            while time.monotonic() < deadline:
                if sum(s["rows"] for s in box.stats()["streams"].values()) == 0:
                    break
                time.sleep(0.05)
        finally:
            link.stop()
        stats = box.stats()
        left = sum(s["rows"] for s in stats["streams"].values())
    print(f"delivered {link.stats()['delivered_records']} records (committed at the regional store); "
          f"{left} left in the outbox")
    if left and link.published:
        print(f"the broker took them, but no regional receiver of fleet '{args.fleet}' acknowledged a commit "
              f"within {args.timeout:.0f} s; they stay in the outbox and go again on the next drain")
    return 0 if left == 0 else 1

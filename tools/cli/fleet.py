"""``edgeloop fleet``: a group's rollout from the operator's side: publish one, pause, resume,
cancel or roll it back, watch it (``status``), or let the controller widen it on results."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections import Counter
from typing import Any, Callable

from edgeloop.runtime.errors import ConfigError

from .common import broker_flags, broker_from_args, print_json


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("fleet", help="rollouts across a fleet group: publish, pause, cancel, roll back, watch, control")
    fsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def group_flag(sp: argparse.ArgumentParser, required: bool = True) -> None:
        sp.add_argument("--group", required=required, help="the fleet group")
        broker_flags(sp, required=True)
        key_flag(sp)

    def key_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--key", default=os.environ.get("EDGELOOP_OPERATOR_KEY"),
                        help="the fleet operator's ed25519 key (from `fleet keygen`; default $EDGELOOP_OPERATOR_KEY): "
                             "what is published is signed with it; devices with mqtt.operator_keys take nothing else")

    sp = fsub.add_parser("keygen", help="a new fleet operator key: KEY (mode 600) and KEY.pub for the devices")
    sp.add_argument("out", help="the private key's path, e.g. operator.key (never overwritten)")
    sp.set_defaults(handler=cmd_keygen)

    sp = fsub.add_parser("config", help="publish a device's or a group's desired config (retained, signed with --key)")
    target = sp.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="the device whose config layer this is")
    target.add_argument("--group", help="the group whose config layer this is")
    body = sp.add_mutually_exclusive_group(required=True)
    body.add_argument("--set", dest="document", help='the layer as JSON, e.g. \'{"camera": {"fps": 2}}\'')
    body.add_argument("--clear", action="store_true", help="withdraw the layer (the file's config returns)")
    broker_flags(sp, required=True)
    key_flag(sp)
    sp.set_defaults(handler=cmd_config)

    sp = fsub.add_parser("status", help="what the devices report: states, versions, the rollout's cohort, failures")
    group_flag(sp, required=False)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the retained reports (default 10)")
    sp.add_argument("--stale-s", type=float, default=180.0,
                    help="a device whose last report is older is stale (default 180; devices report every 60 s)")
    sp.set_defaults(handler=cmd_status)

    sp = fsub.add_parser("rollout", help="publish a group's rollout document (retained)")
    group_flag(sp)
    sp.add_argument("--model", help="the model the bundle replaces (default: the one the group's devices report)")
    sp.add_argument("--version", help="the released version (edgeloop release list; a new rollout)")
    sp.add_argument("--pct", type=float, default=None, help="the share of the group that takes it (default 5)")
    change = sp.add_mutually_exclusive_group()
    change.add_argument("--widen", action="store_true", help="the current rollout to --pct (the same canaries stay)")
    for name, what in (("pause", "devices not yet switching wait"), ("resume", "a paused rollout goes on"),
                       ("cancel", "devices stop; on probation they roll back, committed they go back to previous")):
        change.add_argument(f"--{name}", action="store_true", help=f"the current rollout: {what}")
    sp.add_argument("--previous", help="the version a cancel goes back to (default: what most devices run)")
    sp.add_argument("--deadline-s", type=float, help="devices not committed this long from now count as failed")
    sp.add_argument("--id", help="the rollout's id (default: from the version and the time)")
    sp.add_argument("--salt", help="the cohort's salt (default: the id; the same salt keeps the same canaries)")
    sp.set_defaults(handler=cmd_rollout)

    for name, what in (("pause", "devices not yet switching wait"), ("resume", "a paused rollout goes on"),
                       ("cancel", "devices stop; those on probation roll back, those committed go back to previous")):
        sp = fsub.add_parser(name, help=what)
        group_flag(sp)
        sp.set_defaults(handler=cmd_flag, flag=name)

    sp = fsub.add_parser("rollback", help="every device of the group back to the previous version (one click)")
    group_flag(sp)
    sp.add_argument("--to", help="the version to go back to (default: the rollout's previous)")
    sp.set_defaults(handler=cmd_rollback)

    sp = fsub.add_parser("controller", help="widen the group's rollout step by step on results; abort on failures")
    group_flag(sp)
    sp.add_argument("--steps", default="5,25,100", help="percentages, comma-separated (default 5,25,100)")
    sp.add_argument("--success", type=float, default=0.9, help="share of a step's cohort committed to widen (0.9)")
    sp.add_argument("--abort", type=float, default=0.2, help="share of a step's cohort failed to abort (0.2)")
    sp.add_argument("--stage-timeout-s", type=float, default=1800.0,
                    help="a device not committed this long after its step began counts as failed (1800)")
    sp.add_argument("--every-s", type=float, default=5.0, help="how often to look (default 5)")
    sp.set_defaults(handler=cmd_controller)


def _view(args: argparse.Namespace, settle_s: float = 10.0) -> Any:
    from edgeloop.sync.topics import check_name
    from edgeloop.tools.fleet.view import FleetView

    if getattr(args, "group", None):
        check_name("--group", args.group)
    view = FleetView(broker_from_args(args), args.fleet, f"edgeloop-fleet-{os.getpid()}-{time.monotonic_ns()}",
                     key=_operator_key(args))
    if not view.settle(timeout_s=settle_s):
        view.close()
        raise ConfigError(f"fleet: no answer from the broker {args.broker} within {settle_s:g} s",
                          "check --broker and that the broker runs")
    return view


def _operator_key(args: argparse.Namespace) -> Any:
    import sys

    from edgeloop.sync.signed_doc import load_private_key

    if getattr(args, "key", None):
        return load_private_key(args.key)
    if args.handler not in (cmd_status,):
        print("fleet: no --key: the document goes out unsigned, and devices with mqtt.operator_keys will refuse it",
              file=sys.stderr)
    return None


def cmd_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgeloop.sync.signed_doc import write_keypair

    public, keyid = write_keypair(Path(args.out))
    print_json({"private": args.out, "public": str(public), "keyid": keyid,
                "next": f"copy {public} to the devices and list it in mqtt.operator_keys; keep {args.out} off them"})
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """A config layer, checked as the devices check it (shape only: values are theirs to judge)."""
    import json

    from edgeloop.runtime.agent.desired import parse_document
    from edgeloop.sync.mqtt_client import make_client
    from edgeloop.sync.signed_doc import next_version, read_unverified, sign
    from edgeloop.sync.topics import check_name, topic

    if args.device:
        check_name("--device", args.device)
    else:
        check_name("--group", args.group)
    body = None if args.clear else parse_document(args.document.encode())
    where = topic(args.fleet, args.device, "config") if args.device else \
        topic(args.fleet, "group", f"{args.group}/config")
    key = _operator_key(args)
    client = make_client(broker_from_args(args), f"edgeloop-fleet-config-{os.getpid()}")
    retained: list[bytes] = []
    got = threading.Event()
    client.on_message = lambda c, u, m: (retained.append(m.payload), got.set())
    client.on_connect = lambda c, u, f, r, p=None: c.subscribe(where, 1) if not r.is_failure else None
    client.connect_async(*broker_from_args(args).addresses[0])
    client.loop_start()
    try:
        got.wait(2.0)  # a retained document comes at once; none may be there
        if key is None:
            payload = b"" if body is None else json.dumps(body).encode()
            version = None
        else:
            version = next_version(read_unverified(retained[-1])[0] if retained else None)
            payload = sign(key, "config", where, body, version)
        client.publish(where, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    print_json({"topic": where, "published": body, "version": version, "signed": key is not None})
    return 0


def _checked(doc: Any) -> Any:
    from edgeloop.sync.rollout_doc import parse_rollout

    return parse_rollout(doc.to_json())  # the devices' own check, before anything is published


def _current(view: Any, group: str) -> Any:
    doc = view.docs.get(group)
    if doc is None:
        raise ConfigError(f"fleet: group '{group}' has no rollout document",
                          "publish one with `edgeloop fleet rollout`")
    return doc


def _pct(value: float) -> float:
    import math

    if not math.isfinite(value) or not 0 <= value <= 100:
        raise ConfigError(f"--pct: {value} is not within 0..100", "give a percentage, e.g. --pct 5")
    return value


def _change(args: argparse.Namespace, changes: dict[str, Any] | Callable[[Any], dict[str, Any]]) -> int:
    """The group's current rollout document republished with ``changes`` (or what they make of it)."""
    from dataclasses import replace

    view = _view(args)
    try:
        doc = _current(view, args.group)
        doc = _checked(replace(doc, **(changes(doc) if callable(changes) else changes), issued=time.time()))
        view.publish(args.group, doc)
    finally:
        view.close()
    print_json({"group": args.group, "published": doc.__dict__})
    return 0


FLAGS = {"pause": {"paused": True}, "resume": {"paused": False}, "cancel": {"cancelled": True}}


def cmd_rollout(args: argparse.Namespace) -> int:
    import math

    from edgeloop.sync.rollout_doc import RolloutDoc

    if args.widen:
        if args.pct is None:
            raise ConfigError("--widen needs --pct", "give the new share, e.g. --widen --pct 25")
        return _change(args, {"pct": _pct(args.pct)})
    for flag, changes in FLAGS.items():
        if getattr(args, flag):
            return _change(args, changes)
    if not args.version:
        raise ConfigError("fleet rollout: a new rollout needs --version",
                          "give it (and --model), or --widen/--pause/--resume/--cancel for the current one")
    pct = _pct(5.0 if args.pct is None else args.pct)
    if args.deadline_s is not None and not (math.isfinite(args.deadline_s) and args.deadline_s > 0):
        raise ConfigError(f"--deadline-s: {args.deadline_s} is not a positive number of seconds", "give e.g. 3600")
    _checked(RolloutDoc("check", args.model or "m", args.version, pct, "check"))  # the flags named first
    now = time.time()
    rid = args.id or f"{args.version}-{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}"
    view = _view(args)
    try:
        if not args.model:  # the model the group's devices report rolling out
            models = Counter(r.get("model") for r in view.group_reports(args.group).values() if r.get("model"))
            if len(models) != 1:
                raise ConfigError(f"fleet rollout: the devices of group '{args.group}' report "
                                  f"{', '.join(map(str, models)) or 'no model'}", "give --model")
            args.model = next(iter(models))
        previous = args.previous
        if previous is None:
            active = Counter(r.get("active") for r in view.group_reports(args.group).values() if r.get("active"))
            previous = active.most_common(1)[0][0] if active else None
        doc = _checked(RolloutDoc(rid, args.model, args.version, pct, args.salt or rid, previous=previous,
                                  deadline=now + args.deadline_s if args.deadline_s else None, issued=now))
        view.publish(args.group, doc)
    finally:
        view.close()
    print_json({"group": args.group, "published": doc.__dict__})
    return 0


def cmd_flag(args: argparse.Namespace) -> int:
    return _change(args, FLAGS[args.flag])


def cmd_rollback(args: argparse.Namespace) -> int:
    def back(doc: Any) -> dict[str, Any]:
        to = args.to or doc.previous
        if not to:
            raise ConfigError(f"fleet: the rollout {doc.id} names no previous version", "give --to VERSION")
        if to == doc.version:
            raise ConfigError(f"fleet: {to} is the version being rolled out", "give the version to go back to")
        return {"id": f"{doc.id}-rollback"[:64], "version": to, "previous": doc.version, "pct": 100.0,
                "paused": False, "cancelled": False, "deadline": None}

    return _change(args, back)


def cmd_status(args: argparse.Namespace) -> int:
    from edgeloop.tools.fleet.view import summary

    view = _view(args, settle_s=args.wait)
    try:
        reports = view.group_reports(args.group) if args.group else dict(view.reports)
        doc = view.docs.get(args.group) if args.group else None
        out = {"fleet": args.fleet, "group": args.group, **summary(doc, reports, stale_s=args.stale_s),
               "refused_reports": view.refused}
    finally:
        view.close()
    if args.json:
        out["reports"] = reports
        print_json(out)
        return 0
    print(f"fleet {args.fleet}" + (f" group {args.group}" if args.group else "") + f": {out['devices']} device(s)")
    r = out["rollout"]
    if r:
        flags = "".join(f" ({f})" for f in ("paused", "cancelled") if r[f])
        print(f"  rollout {r['id']}: {r['model']} {r['version']} at {r['pct']:g} %{flags}: cohort {r['cohort']}, "
              f"{r['committed']} committed, {r['rolled_back']} rolled back, {r['failed']} failed, "
              f"{r['in_progress']} in progress, {r['stale']} stale")
    print("  states: " + (", ".join(f"{k} {v}" for k, v in sorted(out["states"].items(), key=str)) or "none"))
    print("  active: " + (", ".join(f"{k} {v}" for k, v in sorted(out["active"].items(), key=str)) or "none"))
    if out["stale"]:
        print(f"  stale (no report for {args.stale_s:g} s): " + ", ".join(out["stale"][:20])
              + (f" and {len(out['stale']) - 20} more" if len(out["stale"]) > 20 else ""))
    for device, reason in sorted((out.get("failures") or {}).items()):
        print(f"  failed {device}: {reason}")
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    from edgeloop.tools.fleet.controller import Controller, Plan

    try:
        steps = tuple(_pct(float(s)) for s in args.steps.split(","))
    except ValueError:
        raise ConfigError(f"--steps: '{args.steps}' is not comma-separated percentages", "write e.g. 5,25,100") \
            from None
    if list(steps) != sorted(set(steps)) or not steps:
        raise ConfigError(f"--steps: {args.steps} does not rise", "write rising percentages, e.g. 5,25,100")
    for name in ("success", "abort"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise ConfigError(f"--{name}: {value} is not a share within 0..1", f"give e.g. --{name} 0.9")
    if not args.stage_timeout_s > 0 or not args.every_s > 0:
        raise ConfigError("--stage-timeout-s and --every-s must be positive", "give seconds, e.g. 1800 and 5")
    view = _view(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *a: stop.set())
    try:
        controller = Controller(view, args.group, Plan(steps, args.success, args.abort, args.stage_timeout_s))
        last = controller.run(stop, every_s=args.every_s)
    finally:
        view.close()
    print_json({"group": args.group, "last": last.__dict__ if last else None,
                "decisions": [d.__dict__ for d in controller.decisions]})
    return 0 if last is None or last.action != "abort" else 1

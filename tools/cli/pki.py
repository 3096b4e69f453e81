"""``edgeloop pki``: the fleet CA and the certificates of its devices and services (see
``tools/pki/authority.py`` for the folder it keeps)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import print_json


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("pki", help="the fleet CA: certificates for the regional broker, devices and services")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def folder(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dir", type=Path, required=True, help="the CA's folder (keep it off the broker and devices)")

    sp = psub.add_parser("init", help="a new fleet CA")
    folder(sp)
    sp.add_argument("--fleet", required=True, help="the fleet's topic level")
    sp.set_defaults(handler=cmd_init)
    sp = psub.add_parser("server", help="the regional broker's TLS certificate")
    folder(sp)
    sp.add_argument("--host", action="append", default=[], help="a name or address clients connect to (repeatable)")
    sp.set_defaults(handler=cmd_server)
    sp = psub.add_parser("device", help="a device's client certificate and its bridge configuration")
    folder(sp)
    sp.add_argument("name", help="the device's name (its topic level)")
    sp.add_argument("--group", action="append", default=[], help="a group whose documents it reads (repeatable)")
    sp.add_argument("--regional", default="regional.example.net:8883", help="HOST:PORT the bridge connects to")
    sp.set_defaults(handler=cmd_device)
    sp = psub.add_parser("service", help="a regional service's client certificate")
    folder(sp)
    sp.add_argument("name")
    sp.add_argument("--role", required=True, choices=("receiver", "responder", "operator"))
    sp.set_defaults(handler=cmd_service)
    sp = psub.add_parser("revoke", help="take a device or service out: the next ACL gives it no topic")
    folder(sp)
    sp.add_argument("name")
    sp.set_defaults(handler=cmd_revoke)
    sp = psub.add_parser("list", help="the inventory")
    folder(sp)
    sp.set_defaults(handler=cmd_list)


def _authority(args: argparse.Namespace) -> Any:
    from edgeloop.tools.pki.authority import Authority

    return Authority(args.dir)


def cmd_init(args: argparse.Namespace) -> int:
    print_json({"ca": str(_authority(args).init(args.fleet)), "fleet": args.fleet})
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    print_json({"certificate": str(_authority(args).issue_server(args.host))})
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    cert = _authority(args).issue_device(args.name, args.group, args.regional)
    print_json({"certificate": str(cert), "folder": str(cert.parent),
                "next": f"copy {cert.parent}/ to the device's /etc/edgeloop/ and bridge.conf to "
                        "/etc/mosquitto/conf.d/; then `edgeloop regional acl` and reload the broker"})
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    print_json({"certificate": str(_authority(args).issue_service(args.name, args.role))})
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    _authority(args).revoke(args.name)
    print_json({"revoked": args.name, "next": "`edgeloop regional acl` and reload the broker (SIGHUP)"})
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print_json(_authority(args).inventory())
    return 0
